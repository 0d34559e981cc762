"""Wizard steps 3 and 4: method & preset (beginner fields or the whole job), then training in
the runner's background thread (the page only reads snapshots, so closing it never stops a job)."""
from __future__ import annotations

from engine.i18n import Translator, describe_error
from webapp.wizard_logic import (BEGINNER_FIELDS, METHODS, build_job, demo_job,
                                 field_help, fields_from_job, job_from_shared_preset, preflight,
                                 steps_text)


def build_method_step(t: Translator, ws, base, dataset, per_epoch, tier_name: str, tier_reason: str):
    """Returns the job TOML textbox (what step 4 trains)."""
    import gradio as gr
    import tomli_w

    from engine.presets import list_tiers

    demo = demo_job()
    values = fields_from_job(demo)
    gr.Markdown(t("method.title"))
    with gr.Row():
        method = gr.Dropdown(METHODS, value="lora", label=t("method.method"), elem_id="method",
                             info=t("method.method_info"))
        tier = gr.Dropdown(list_tiers(), value=tier_name, label=t("method.tier"), elem_id="tier",
                           info=tier_reason)
    boxes = {}
    with gr.Group():
        for key, _, _ in BEGINNER_FIELDS:
            value, label, why = values.get(key), t(f"field.{key}.label"), field_help(t, key, tier_name)
            if isinstance(value, str) or value is None:
                boxes[key] = gr.Textbox(value or "", label=label, info=why, elem_id=f"f-{key}")
            else:
                boxes[key] = gr.Number(value, label=label, info=why, elem_id=f"f-{key}")
    arithmetic = gr.Markdown(steps_text(int(per_epoch.value or 0), values["epochs"], values["batch_size"],
                                        t=t), elem_id="steps-arithmetic")
    with gr.Row():
        build = gr.Button(t("method.build"), elem_id="build-job")
        check = gr.Button(t("method.check"), elem_id="check-job")
    with gr.Accordion(t("method.expert"), open=False):
        job_text = gr.Code(tomli_w.dumps(build_job(base.value, dataset.value, "lora", tier_name, values)),
                           language=None, label=t("method.job"), elem_id="job-toml")
    with gr.Accordion(t("method.preset_title"), open=False):
        preset_text = gr.Textbox(label=t("method.preset_paste"), lines=3, elem_id="preset-in")
        preset_file = gr.File(label=t("method.preset_file"), file_types=[".toml"], type="filepath",
                              elem_id="preset-file")
        use_preset = gr.Button(t("method.preset_use"), elem_id="use-preset")
    verdict = gr.Textbox(label=t("method.verdict"), interactive=False, elem_id="job-check")
    keys = list(boxes)

    def load_preset_file(path):
        from engine.preset_share import PresetError, read_preset_file

        if not path:  # (Gradio accepts only a file it received itself: see build_server)
            return gr.skip(), gr.skip()
        try:
            return read_preset_file(path), gr.skip()
        except PresetError as err:
            return gr.skip(), t("method.preset_bad", error=describe_error(err, t))

    def apply_preset(text, b, d):
        try:
            ws.model(b), ws.path(d)
        except ValueError as err:  # PathNotAllowed
            return gr.skip(), t("method.preset_bad", error=describe_error(err, t))
        job, message = job_from_shared_preset(text, b, d, t)
        return (job or gr.skip()), message

    preset_file.upload(load_preset_file, preset_file, [preset_text, verdict], api_visibility="private")
    use_preset.click(apply_preset, [preset_text, base, dataset], [job_text, verdict], api_name="use_preset")

    def make(b, d, m, tier_choice, *vals):
        job = build_job(b, d, m, tier_choice, dict(zip(keys, vals)))
        text = tomli_w.dumps(job)
        return text, preflight(text, t, ws)[1]

    def arith(n, epochs, batch):
        return steps_text(int(n or 0), epochs, batch, t=t)

    build.click(make, [base, dataset, method, tier, *boxes.values()], [job_text, verdict],
                api_name="build_job")
    check.click(lambda text: preflight(text, t, ws)[1], job_text, verdict, api_name="check_job")
    for src in (per_epoch, boxes["epochs"], boxes["batch_size"]):
        src.change(arith, [per_epoch, boxes["epochs"], boxes["batch_size"]], arithmetic, api_visibility="private")
    return job_text


def build_train_step(t: Translator, ws, runner, job_text):
    """Returns the saved-files textbox (the compare step offers them)."""
    import gradio as gr
    import pandas as pd

    from engine.config import ConfigError, parse_job_text
    from engine.jobs import JobBusy

    gr.Markdown(t("train.title"))
    with gr.Row():
        start_btn = gr.Button(t("train.start"), variant="primary", elem_id="start")
        stop_btn = gr.Button(t("train.stop"), variant="stop", elem_id="stop")
        resume_btn = gr.Button(t("train.resume"), elem_id="resume")
    message = gr.Textbox(label=t("train.message"), interactive=False, elem_id="message")
    bar = gr.Slider(0, 100, value=0, label=t("train.progress_bar"), interactive=False, elem_id="progress-bar")
    progress = gr.Textbox(label=t("train.progress"), interactive=False, elem_id="progress")
    plot = gr.LinePlot(x="step", y="loss", label=t("train.loss"), elem_id="loss-plot")
    samples = gr.Gallery(label=t("train.samples"), columns=8, height=180, object_fit="contain",
                         allow_preview=False, elem_id="samples")
    log = gr.Textbox(label=t("train.log"), lines=8, interactive=False)
    files = gr.Textbox(label=t("train.saved"), lines=3, interactive=False, elem_id="saved")

    def launch(text: str, resume: str | None = None) -> str:
        ok, why = preflight(text, t, ws)  # (also serves the job's output folder: samples)
        if not ok:
            return why
        try:
            runner.start(parse_job_text(text), resume=resume)
        except JobBusy as err:
            return t("train.busy") if err.work == "training" else t("train.busy_grid")
        except ConfigError as err:
            return describe_error(err, t)
        return t("train.resuming") if resume else t("train.started")

    def stop() -> str:
        runner.stop()
        return t("train.stopping")

    def status():
        s = runner.snapshot()
        eta = t("train.eta", seconds=f"{s.eta_seconds:.0f}") if s.eta_seconds is not None else ""
        head = t("train.status", status=t(f"train.status_{s.status}"), step=s.step, total=s.total_steps,
                 epoch=s.epoch, eta=eta)
        if s.error:
            keyed = getattr(s.exception, "key", None)
            head += "\n" + t("errors.failed", error=describe_error(s.exception, t) if keyed else s.error)
        pct = 100.0 * s.step / s.total_steps if s.total_steps else 0.0
        frame = pd.DataFrame({"step": list(range(1, len(s.losses) + 1)), "loss": s.losses})
        return head, pct, "\n".join(s.log[-40:]), frame, s.samples[-12:], "\n".join(s.saved)

    outs = [progress, bar, log, plot, samples, files]
    start_btn.click(launch, job_text, message, api_name="start_training")
    resume_btn.click(lambda text: launch(text, "auto"), job_text, message, api_name="resume_training")
    stop_btn.click(stop, None, message, api_name="stop_training")
    gr.Button("Refresh", visible=False).click(status, None, outs, api_name="status")
    gr.Timer(1.0).tick(status, None, outs, api_visibility="private")
    return files
