"""The web app: a thin Gradio layer over the engine's JobRunner.

This first version offers the 'expert' path: edit a job TOML, start/stop, watch progress and
loss. No work happens at import; training runs in the runner's thread, never in a click handler.
"""
from __future__ import annotations

import socket
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_JOB = ROOT / "presets" / "jobs" / "demo_lora.toml"


def default_job_text() -> str:
    """The demo job (embedded base model + demo dataset) with its paths made absolute, so a
    newcomer can press Start at once, wherever the app was launched from."""
    import tomli_w

    job = tomllib.loads(DEMO_JOB.read_text(encoding="utf-8"))
    job["dataset"]["path"] = str((ROOT / job["dataset"]["path"]).resolve())
    job["output"]["dir"] = str((ROOT / job["output"]["dir"]).resolve())
    return tomli_w.dumps(job)


def find_free_port(host: str, start: int, tries: int = 50) -> int:
    """The requested port, or the next free one (a second copy of the app must still start)."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    raise OSError(f"no free port in {start}-{start + tries - 1}")


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must look like user:password")
    return user, password


def build_app(runner=None):
    import gradio as gr
    import pandas as pd

    from engine.config import ConfigError, dump_config, parse_config
    from engine.jobs import JobBusy, JobRunner

    runner = runner or JobRunner()
    default_text = default_job_text()

    def start(text: str) -> str:
        try:
            cfg = parse_config(tomllib.loads(text))
            runner.start(cfg)
        except tomllib.TOMLDecodeError as err:
            return f"not valid TOML: {err}"
        except (ConfigError, JobBusy) as err:
            return str(err)
        return "started"

    def stop() -> str:
        runner.stop()
        return "stopping after the current step; the LoRA learned so far will be saved"

    def validate(text: str) -> str:
        try:
            return dump_config(parse_config(tomllib.loads(text)))
        except (tomllib.TOMLDecodeError, ConfigError) as err:
            return str(err)

    def status():
        s = runner.snapshot()
        eta = f", about {s.eta_seconds:.0f} s left" if s.eta_seconds is not None else ""
        head = f"{s.status}: step {s.step}/{s.total_steps}, epoch {s.epoch}{eta}"
        if s.error:
            head += f"\n{s.error}"
        frame = pd.DataFrame({"step": list(range(1, len(s.losses) + 1)), "loss": s.losses})
        return head, "\n".join(s.log[-40:]), frame, "\n".join(s.saved)

    from webapp.compare import build_compare_tab

    with gr.Blocks(title="LoRA Forge") as app:
        with gr.Tab("Train", elem_id="tab-train"):
            gr.Markdown("# LoRA Forge\nTrain a LoRA from a job file. The job below is the demo: the "
                        "embedded *shapes* base model learns a purple star (trigger word "
                        "`zkz`) in a few minutes on a CPU. Edit the TOML, check it, start.")
            job = gr.Textbox(value=default_text, lines=24, label="Job (TOML)", elem_id="job-toml")
            with gr.Row():
                check_btn = gr.Button("Check job", elem_id="check")
                start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            message = gr.Textbox(label="Message", interactive=False, elem_id="message")
            progress = gr.Textbox(label="Progress", interactive=False, elem_id="progress")
            plot = gr.LinePlot(x="step", y="loss", label="Loss per step", elem_id="loss-plot")
            log = gr.Textbox(label="Log", lines=8, interactive=False)
            files = gr.Textbox(label="Saved files", lines=3, interactive=False, elem_id="saved")
            check_btn.click(validate, job, message, api_name="check_job")
            gr.Button("Default job", visible=False).click(default_job_text, None, job, api_name="default_job")
            start_btn.click(start, job, message, api_name="start_training")
            stop_btn.click(stop, None, message, api_name="stop_training")
            refresh = gr.Button("Refresh", visible=False)
            refresh.click(status, None, [progress, log, plot, files], api_name="status")
            gr.Timer(1.0).tick(status, None, [progress, log, plot, files], api_name=False)
        with gr.Tab("Compare", elem_id="tab-compare"):
            build_compare_tab(runner)
    return app


def serve(host: str = "127.0.0.1", port: int = 7860, open_browser: bool = True,
          listen: bool = False, auth: str | None = None, block: bool = True):
    try:
        credentials = parse_auth(auth)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if listen:
        if credentials is None:
            print("error: --listen exposes the app to your network; add --auth user:password",
                  file=sys.stderr)
            return 2
        host = "0.0.0.0"
    port = find_free_port(host, port)
    app = build_app()
    print(f"LoRA Forge running at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}")
    app.launch(server_name=host, server_port=port, inbrowser=open_browser, auth=credentials,
               prevent_thread_lock=not block, show_error=True, quiet=True,
               allowed_paths=[str(ROOT / "output")])  # grids and samples are shown from there
    return app if not block else 0
