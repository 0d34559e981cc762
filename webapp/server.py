"""The web app: a step-by-step wizard, a thin Gradio layer over the engine.

No work happens at import; training runs in the runner's thread, never in a click handler, so
the page stays responsive and closing it does not stop a job. Every event has an api_name, so the
whole flow is scriptable with gradio_client.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from webapp.wizard_logic import output_root

ROOT = Path(__file__).resolve().parent.parent


def default_job_text() -> str:
    """The demo job (embedded base model + demo dataset) with its paths made absolute, so a
    newcomer can press Start at once, wherever the app was launched from."""
    import tomli_w

    from webapp.wizard_logic import demo_job

    return tomli_w.dumps(demo_job())


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


def build_app(runner=None, tier: tuple[str, str] | None = None):
    """The wizard: six steps as tabs, each a thin layer over the engine. ``tier``: (name, reason)
    of the hardware tier to preselect (default: probe this machine)."""
    import gradio as gr

    from engine.jobs import JobRunner
    from webapp.compare import build_compare_tab
    from webapp.steps_export import build_export_step
    from webapp.steps_prepare import build_base_step, build_dataset_step
    from webapp.steps_train import build_method_step, build_train_step, hardware_tier

    runner = runner or JobRunner()
    tier_name, tier_reason = tier or hardware_tier()
    with gr.Blocks(title="LoRA Forge") as app:
        gr.Markdown("# LoRA Forge\nFrom your images to a tested, exported LoRA in six steps. "
                    "Everything is preset for the built-in demo (a purple star, trigger word "
                    "`zkz`): press **Start training** in step 4 to see the whole flow on a CPU.")
        with gr.Tabs():
            with gr.Tab("1 Base model", elem_id="tab-base"):
                base = build_base_step()
            with gr.Tab("2 Dataset", elem_id="tab-dataset"):
                dataset, per_epoch, _ = build_dataset_step()
            with gr.Tab("3 Method", elem_id="tab-method"):
                job_text = build_method_step(base, dataset, per_epoch, tier_name, tier_reason)
            with gr.Tab("4 Train", elem_id="tab-train"):
                saved = build_train_step(runner, job_text)
            with gr.Tab("5 Compare", elem_id="tab-compare"):
                picked = build_compare_tab(runner, saved)
            with gr.Tab("6 Export", elem_id="tab-export"):
                build_export_step(picked, job_text)
        demo_text = gr.Textbox(visible=False)
        gr.Button("Default job", visible=False).click(default_job_text, None, demo_text, api_name="default_job")
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
    from webapp.steps_train import hardware_tier

    tier = hardware_tier()
    print(f"hardware: {tier[1]}\npreset tier: {tier[0]}")
    app = build_app(tier=tier)
    print(f"LoRA Forge running at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}")
    app.launch(server_name=host, server_port=port, inbrowser=open_browser, auth=credentials,
               prevent_thread_lock=not block, show_error=True, quiet=True,
               allowed_paths=[str(output_root())])  # grids and samples are shown from there
    return app if not block else 0
