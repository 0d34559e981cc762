"""Wizard steps 3 and 4: the method and its settings (beginner fields, Advanced, the whole job
as TOML, a shared preset), then training in the runner's background thread (the page only
reads snapshots, so closing it never stops a job). Every widget edits the page's one job."""
from __future__ import annotations

import time
from pathlib import Path

from engine.i18n import Translator, describe_error
from webapp import job_form as jf
from webapp.job_view import CONCURRENCY
from webapp.wizard_logic import job_from_shared_preset, vram_line, wizard_job


def field_widget(t: Translator, field: jf.FormField, method: str, value, help_text: str):
    """The widget the schema asks for: a checkbox, a list, a number with its limits, text."""
    import gradio as gr

    info = jf.field_info(field, jf.METHODS[0]) or next(
        i for m in jf.METHODS if (i := jf.field_info(field, m)) is not None)
    kind, label = jf.kind_of(info), t(f"field.{field.path}.label")
    common = {"label": label, "info": help_text, "elem_id": f"f-{field.key}",
              "visible": jf.applies(field, method)}
    if kind == "bool":
        return gr.Checkbox(bool(value), **common)
    if kind == "choice":
        return gr.Dropdown([(jf.choice_label(t, field, c), c) for c in jf.choices(info)], value=value, **common)
    if kind in ("int", "float"):
        low, high = jf.limits(info)
        return gr.Number(value, precision=0 if kind == "int" else None, minimum=low, maximum=high, **common)
    return gr.Textbox(value or "", lines=3 if kind == "lines" else 1, **common)


def build_method_step(t: Translator, ws, view, tier_name: str, tier_reason: str) -> None:
    import gradio as gr
    import tomli_w

    from engine.config.tiers import job_family, list_tiers, load_tier

    job = wizard_job()
    method = jf.method_of(job)
    values, tier_values = jf.form_values(job), load_tier(tier_name, job_family(job))
    gr.Markdown(f"{t('method.title')}\n\n{t('method.tier_apply')}")
    with gr.Row():
        view.method = gr.Dropdown([(jf.method_label(t, m), m) for m in jf.METHODS], value=method,
                                  label=t("method.method"), info=t("method.method_info"), elem_id="method")
        view.tier = gr.Dropdown(list_tiers(), value=tier_name, label=t("method.tier"),
                                info=tier_reason, elem_id="tier")

    def widgets(advanced: bool) -> None:
        for field in jf.FIELDS:
            if field.advanced == advanced:
                help_text = jf.field_help(t, field, method if jf.applies(field, method) else jf.METHODS[0],
                                          tier_values, tier_name)
                view.fields[field.key] = field_widget(t, field, method, values.get(field.key), help_text)

    with gr.Group():
        widgets(False)
    with gr.Accordion(t("method.advanced"), open=False, elem_id="advanced"):
        widgets(True)
    checked = view.plan(job)
    view.arith = gr.Markdown(view.render(job, checked=checked)[-2], elem_id="steps-arithmetic")
    check = gr.Button(t("method.check"), elem_id="check-job")
    verdict = gr.Textbox(label=t("method.verdict"), interactive=False, lines=3, elem_id="job-check")
    with gr.Accordion(t("method.expert"), open=False, elem_id="expert"):
        view.toml = gr.Code(tomli_w.dumps(job), language=None, label=t("method.job"), elem_id="job-toml")
        view.expert = gr.Markdown("", elem_id="expert-only")
    with gr.Accordion(t("method.preset_title"), open=False):
        preset_text = gr.Textbox(label=t("method.preset_paste"), lines=3, elem_id="preset-in")
        preset_file = gr.File(label=t("method.preset_file"), file_types=[".toml"], type="filepath",
                              elem_id="preset-file")
        use_preset = gr.Button(t("method.preset_use"), elem_id="use-preset")

    def load_preset_file(path):
        from engine.config.preset_share import PresetError, read_preset_file

        if not path:  # (Gradio accepts only a file it received itself: see build_server)
            return gr.skip(), gr.skip()
        try:
            return read_preset_file(path), gr.skip()
        except PresetError as err:
            return gr.skip(), t("method.preset_bad", error=describe_error(err, t))

    def apply_preset(text, job, b, d):
        try:
            ws.model(b), ws.path(d)
        except ValueError as err:  # PathNotAllowed
            return [t("method.preset_bad", error=describe_error(err, t))] + [gr.skip()] * len(view.outputs())
        new, message = job_from_shared_preset(text, b, d, t)
        if new is None:
            return [message] + [gr.skip()] * len(view.outputs())
        new["output"]["dir"] = job.get("output", {}).get("dir", new["output"]["dir"])  # keep where runs go
        return [message, *view.render(new, before=job)]

    def check_job(job):
        checked = view.plan(job)
        head = t("method.ready") if checked.ok else t("method.not_ready")
        lines = [head, checked.text.replace("**", ""), *(f"- {w}" for w in checked.warnings)]
        if checked.ok:
            lines.append(vram_line(checked.cfg, t))
        return ["\n".join(lines), *view.render(job, checked=checked, before=job)]

    preset_file.upload(load_preset_file, preset_file, [preset_text, verdict], api_visibility="private")
    view.later.append(lambda: [
        use_preset.click(apply_preset, [preset_text, view.state, view.base, view.dataset],
                         [verdict, *view.outputs()], api_name="use_preset", **CONCURRENCY),
        check.click(check_job, view.state, [verdict, *view.outputs()], api_name="check_job", **CONCURRENCY)])


def build_train_step(t: Translator, ws, runner, view):
    """Returns the saved-files textbox (the compare step offers them)."""
    import gradio as gr

    from engine.training.jobs import JobBusy

    view.summary = gr.Markdown(view.summary_text(view.plan(wizard_job())), elem_id="train-summary")
    gr.Markdown(t("train.title"))
    with gr.Row():
        start_btn = gr.Button(t("train.start"), variant="primary", elem_id="start")
        stop_btn = gr.Button(t("train.stop"), variant="stop", elem_id="stop")
        resume_btn = gr.Button(t("train.resume"), elem_id="resume")
    message = gr.Textbox(label=t("train.message"), interactive=False, elem_id="message")
    said = gr.State({"text": "", "at": 0.0})  # the last button's answer, until the job moves on
    bar = gr.HTML(progress_html(t, runner.snapshot()), elem_id="progress-bar")
    progress = gr.Textbox(label=t("train.progress"), interactive=False, elem_id="progress")
    # (created with rows of the right types: from an empty value the curve names would be drawn as
    # one numeric colour scale, and no line)
    plot = gr.LinePlot(loss_frame(runner.snapshot().losses or [float("nan")]), x="step", y="loss", color="curve",
                       color_map={"raw": "#c8c8c8", "smoothed": "#d62728", "validation": "#2ca02c"},
                       label=t("train.loss"), elem_id="loss-plot")
    samples = gr.Gallery(label=t("train.samples"), columns=4, height=360, object_fit="contain",
                         allow_preview=True, elem_id="samples")
    log = gr.Textbox(label=t("train.log"), lines=8, interactive=False, elem_id="log")
    files = gr.Textbox(label=t("train.saved"), lines=3, interactive=False, elem_id="saved")

    def answer(text: str, at: float | None = None) -> tuple[str, dict]:
        """The button's answer; the status line replaces it once a job ends after ``at``."""
        return text, {"text": text, "at": time.time() if at is None else at}

    def start(job):
        from engine.config.job import parse_config
        from engine.training.progress import TqdmProgress
        from engine.training.runs import new_run_folder

        checked = view.plan(job)
        if not checked.ok:
            return (*answer(checked.text), *view.render(job, checked=checked, before=job))
        if runner.busy:  # before a run folder is made for nothing
            return (*answer(t("train.busy") if runner.busy == "training" else t("train.busy_grid")),
                    *view.render(job, checked=checked, before=job))
        folder = new_run_folder(Path(checked.cfg.output.dir), checked.cfg.output.name)
        cfg = parse_config(jf.set_value(job, "output.dir", str(folder)))
        ws.serve(folder)
        pressed = time.time()
        try:
            runner.start(cfg, extra=TqdmProgress(print_every=10))
        except JobBusy as err:
            folder.rmdir()
            return (*answer(t("train.busy") if err.work == "training" else t("train.busy_grid")),
                    *view.render(job, checked=checked, before=job))
        return (*answer(t("train.started", folder=folder), pressed), *view.render(job, checked=checked, before=job))

    def resume(job):
        from engine.config.job import ConfigError, load_config
        from engine.training.loop import _find_resume_state
        from engine.training.progress import TqdmProgress
        from engine.training.state import StateError

        run = run_to_resume(runner, job)
        if run is None:
            return answer(t("train.nothing_to_resume"))
        try:
            cfg = load_config(run.job)
            ws.job(cfg)
            state = _find_resume_state(cfg, "auto")
        except (ConfigError, StateError, ValueError) as err:  # the previous run's view stays
            return answer(t("train.resume_failed", error=describe_error(err, t)))
        pressed = time.time()
        try:
            runner.start(cfg, extra=TqdmProgress(print_every=10), resume="auto")
        except JobBusy as err:
            return answer(t("train.busy") if err.work == "training" else t("train.busy_grid"))
        return answer(t("train.resuming", folder=run.folder, step=state.position.step), pressed)

    def stop():
        runner.stop()
        return answer(t("train.stopping"))

    def status(said_now):
        s = runner.snapshot()
        finished = s.status in ("done", "stopped", "failed") and s.finished_at >= said_now.get("at", 0)
        text = status_line(t, s) if finished else (said_now.get("text") or status_line(t, s))
        frame = loss_frame(s.losses, s.validation)
        gallery = [(p, sample_label(t, p)) for p in s.samples[-12:]]
        idle = runner.busy != "training"  # Start and Resume wait while a job runs
        return (text, progress_html(t, s), progress_line(t, s), "\n".join(s.log[-200:]), frame, gallery,
                "\n".join(s.saved), gr.Button(interactive=idle), gr.Button(interactive=idle))

    outs = [message, bar, progress, log, plot, samples, files, start_btn, resume_btn]
    view.later.append(lambda: start_btn.click(start, view.state, [message, said, *view.outputs()],
                                              api_name="start_training", **CONCURRENCY))
    view.later.append(lambda: resume_btn.click(resume, view.state, [message, said], api_name="resume_training",
                                               **CONCURRENCY))
    stop_btn.click(stop, None, [message, said], api_name="stop_training")
    gr.Button("Refresh", visible=False).click(status, said, outs, api_name="status")
    gr.Timer(1.0).tick(status, said, outs, api_visibility="private")
    return files


def run_to_resume(runner, job: dict):
    """The run Resume continues: the one this app trained last, if it can be resumed; else the
    newest resumable run in the job's output folder (after a restart or a page reload)."""
    from engine.training.runs import list_runs, read_run

    last = runner.snapshot().run_dir
    if last:
        run = read_run(Path(last))
        if run is not None and run.resumable:
            return run
    runs = [r for r in list_runs(Path(job.get("output", {}).get("dir", ""))) if r.resumable]
    same = [r for r in runs if r.name == job.get("output", {}).get("name")]
    return (same or runs or [None])[0]


def status_line(t: Translator, s) -> str:
    """The job in one line: running, done (with its file), stopped (Resume continues), failed
    (why, in the page's language)."""
    if s.status == "failed":
        keyed = getattr(s.exception, "key", None) or getattr(s.exception, "problems", None)
        return t("train.failed", error=describe_error(s.exception, t) if keyed else s.error)
    if s.status == "done":
        return t("train.finished", file=s.saved[-1] if s.saved else "-")
    if s.status == "stopped":
        return t("train.stopped_at", step=s.step, file=s.saved[-1] if s.saved else "-")
    return t(f"train.status_{s.status}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60:02d}:{seconds % 60:02d}"


def progress_line(t: Translator, s) -> str:
    if not s.total_steps:
        return t(f"train.status_{s.status}")
    speed = s.steps_per_second
    elapsed = (s.finished_at or time.time()) - s.started_at if s.started_at else 0
    eta = t("train.eta", time=_clock(s.eta_seconds)) if s.eta_seconds is not None else ""
    return t("train.status", status=t(f"train.status_{s.status}"), step=s.step, total=s.total_steps,
             epoch=s.epoch, speed=f"{speed:.2f}" if speed else "-", elapsed=_clock(elapsed), eta=eta)


def progress_html(t: Translator, s) -> str:
    """A real progress bar (role=progressbar, so screen readers and tests read its value)."""
    pct = 100.0 * s.step / s.total_steps if s.total_steps else 0.0
    colour = {"failed": "#c62828", "stopped": "#ef6c00"}.get(s.status, "#2e7d32")
    return (f"<div role='progressbar' aria-valuenow='{pct:.0f}' aria-valuemin='0' aria-valuemax='100' "
            f"aria-label='{t('train.progress_bar')}' style='height:14px;border-radius:7px;background:#e0e0e0'>"
            f"<div style='width:{pct:.1f}%;height:100%;border-radius:7px;background:{colour}'></div></div>"
            f"<p style='margin:2px 0 0 0'>{pct:.0f}%</p>")


def loss_frame(losses: list[float], validation: list[tuple[int, float]] | None = None):
    """The raw loss (faint), its smoothed curve and the validation loss, as the plot's rows."""
    import pandas as pd

    from engine.training.curves import smooth

    steps = list(range(1, len(losses) + 1))
    val_steps, val_losses = (list(v) for v in zip(*validation)) if validation else ([], [])
    return pd.DataFrame({"step": steps * 2 + val_steps, "loss": [*losses, *smooth(losses), *val_losses],
                         "curve": ["raw"] * len(losses) + ["smoothed"] * len(losses)
                         + ["validation"] * len(val_steps)})


def sample_label(t: Translator, path: str) -> str:
    """``name_e000002_s000030_00.png`` -> "epoch 2, step 30"."""
    import re

    m = re.search(r"_e(\d+)_s(\d+)_", Path(path).name)
    return t("train.sample_label", epoch=int(m.group(1)), step=int(m.group(2))) if m else Path(path).stem
