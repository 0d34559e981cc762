"""Wizard steps 3 and 4: method & preset (beginner fields or the whole job), then training in
the runner's background thread (the page only reads snapshots, so closing it never stops a job)."""
from __future__ import annotations

import tomllib

from webapp.wizard_logic import (BEGINNER_FIELDS, METHODS, build_job, demo_job, fields_from_job,
                                 preflight, steps_text)


def hardware_tier() -> tuple[str, str]:
    from engine.hardware import pick_tier, probe

    choice = pick_tier(probe())
    return choice.name, choice.reason


def build_method_step(base, dataset, per_epoch, tier_name: str, tier_reason: str):
    """Returns the job TOML textbox (what step 4 trains)."""
    import gradio as gr
    import tomli_w

    from engine.presets import list_tiers

    demo = demo_job()
    values = fields_from_job(demo)
    gr.Markdown("### 3. Method and settings\nLoRA suits most people: small files, works with any "
                "prompt. The tier was chosen from your hardware; it sets the memory-related "
                "options (precision, gradient checkpointing, 8-bit optimizer, offloading). The "
                "fields below always win over it.")
    with gr.Row():
        method = gr.Dropdown(METHODS, value="lora", label="Method", elem_id="method",
                             info="lora / locon / loha / lokr: add-on networks; textual_inversion: "
                                  "a new word; hypernetwork: A1111 style; dreambooth: a whole model.")
        tier = gr.Dropdown(list_tiers(), value=tier_name, label="Hardware tier", elem_id="tier",
                           info=tier_reason)
    boxes = {}
    with gr.Group():
        for key, _, _, label, why in BEGINNER_FIELDS:
            value = values.get(key)
            if isinstance(value, str) or value is None:
                boxes[key] = gr.Textbox(value or "", label=label, info=why, elem_id=f"f-{key}")
            else:
                boxes[key] = gr.Number(value, label=label, info=why, elem_id=f"f-{key}")
    arithmetic = gr.Markdown(steps_text(int(per_epoch.value or 0), values["epochs"], values["batch_size"]),
                             elem_id="steps-arithmetic")
    with gr.Row():
        build = gr.Button("Build job from these settings", elem_id="build-job")
        check = gr.Button("Check job", elem_id="check-job")
    with gr.Accordion("Expert view: the whole job (every option; edit freely)", open=False):
        job_text = gr.Code(tomli_w.dumps(build_job(base.value, dataset.value, "lora", tier_name, values)),
                           language=None, label="Job (TOML)", elem_id="job-toml")
    verdict = gr.Textbox(label="Check", interactive=False, elem_id="job-check")
    keys = list(boxes)

    def make(b, d, m, t, *vals):
        job = build_job(b, d, m, t, dict(zip(keys, vals)))
        text = tomli_w.dumps(job)
        return text, preflight(text)[1]

    def arith(n, epochs, batch):
        return steps_text(int(n or 0), epochs, batch)

    build.click(make, [base, dataset, method, tier, *boxes.values()], [job_text, verdict],
                api_name="build_job")
    check.click(lambda text: preflight(text)[1], job_text, verdict, api_name="check_job")
    for src in (per_epoch, boxes["epochs"], boxes["batch_size"]):
        src.change(arith, [per_epoch, boxes["epochs"], boxes["batch_size"]], arithmetic, api_visibility="private")
    return job_text


def build_train_step(runner, job_text):
    """Returns the saved-files textbox (the compare step offers them)."""
    import gradio as gr
    import pandas as pd

    from engine.config import ConfigError, parse_config
    from engine.jobs import JobBusy

    gr.Markdown("### 4. Train\nTraining runs in the background: you can close this page and come "
                "back; the job keeps going. One job at a time. Stop saves what was learned so far "
                "(and a resumable state when the job has `save_state`).")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        resume_btn = gr.Button("Resume", elem_id="resume")
    message = gr.Textbox(label="Message", interactive=False, elem_id="message")
    bar = gr.Slider(0, 100, value=0, label="Progress (%)", interactive=False, elem_id="progress-bar")
    progress = gr.Textbox(label="Progress", interactive=False, elem_id="progress")
    plot = gr.LinePlot(x="step", y="loss", label="Loss per step", elem_id="loss-plot")
    samples = gr.Gallery(label="Sample images", columns=8, height=180, object_fit="contain",
                         allow_preview=False, elem_id="samples")
    log = gr.Textbox(label="Log", lines=8, interactive=False)
    files = gr.Textbox(label="Saved files", lines=3, interactive=False, elem_id="saved")

    def launch(text: str, resume: str | None = None) -> str:
        ok, why = preflight(text)
        if not ok:
            return why
        try:
            runner.start(parse_config(tomllib.loads(text)), resume=resume)
        except (ConfigError, JobBusy) as err:
            return str(err)
        return "resuming from the newest saved state" if resume else "started"

    def stop() -> str:
        runner.stop()
        return "stopping after the current step; what was learned so far will be saved"

    def status():
        s = runner.snapshot()
        eta = f", about {s.eta_seconds:.0f} s left" if s.eta_seconds is not None else ""
        head = f"{s.status}: step {s.step}/{s.total_steps}, epoch {s.epoch}{eta}"
        if s.error:
            head += f"\n{s.error}"
        pct = 100.0 * s.step / s.total_steps if s.total_steps else 0.0
        frame = pd.DataFrame({"step": list(range(1, len(s.losses) + 1)), "loss": s.losses})
        return head, pct, "\n".join(s.log[-40:]), frame, s.samples[-12:], "\n".join(s.saved)

    outs = [progress, bar, log, plot, samples, files]
    start_btn.click(launch, job_text, message, api_name="start_training")
    resume_btn.click(lambda t: launch(t, "auto"), job_text, message, api_name="resume_training")
    stop_btn.click(stop, None, message, api_name="stop_training")
    gr.Button("Refresh", visible=False).click(status, None, outs, api_name="status")
    gr.Timer(1.0).tick(status, None, outs, api_visibility="private")
    return files
