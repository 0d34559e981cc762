"""The web app: a step-by-step wizard, a thin Gradio layer over the engine.

No work happens at import; training runs in the runner's thread, never in a click handler, so
the page stays responsive and closing it does not stop a job. Every event has an api_name, so the
whole flow is scriptable with gradio_client.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from engine.i18n import DEFAULT_LANGUAGE, LANGUAGES, Translator, pick_language

ROOT = Path(__file__).resolve().parent.parent
FAVICON = Path(__file__).resolve().parent / "favicon.png"
# Help text under fields at a contrast of at least 4.5:1 (WCAG AA) on the block background
# (Gradio's default grey is lighter than that).
CSS = """
.gradio-container { --block-info-text-color: #4b5563; }
.dark .gradio-container { --block-info-text-color: #d1d5db; }
"""


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


def hardware_tier():
    """The preset tier for this machine (engine.system.hardware.TierChoice)."""
    from engine.system.hardware import pick_tier, probe

    return pick_tier(probe())


def build_app(runner=None, tier=None, lang: str = DEFAULT_LANGUAGE, workspace=None):
    """The wizard in one language: six steps as tabs, each a thin layer over the engine.
    ``tier``: the engine.system.hardware.TierChoice to preselect (default: probe this machine); its
    reason is shown in the page's language. ``workspace``: webapp.security.Workspace, which
    paths a request may use (default: a local server's, any)."""
    import gradio as gr

    from engine.training.jobs import JobRunner
    from webapp.compare import build_compare_tab
    from webapp.job_view import JobView
    from webapp.security import Workspace
    from webapp.steps_export import build_export_step
    from webapp.steps_prepare import build_base_step, build_dataset_step
    from webapp.steps_train import build_method_step, build_train_step
    from webapp.wizard_logic import wizard_job

    t = Translator(lang)
    runner = runner or JobRunner()
    tier = tier or hardware_tier()
    ws = workspace or Workspace.for_app()
    view = JobView(t, ws, tier.name, runner)
    # plain links in this tab (Markdown links open a new one); relative, so a proxy prefix works
    switch = " · ".join(f"<b>{name}</b>" if code == lang else f"<a href='../{code}/' target='_self'>{name}</a>"
                        for code, name in LANGUAGES.items())
    with gr.Blocks(title=t("app.title")) as app:
        gr.Markdown(f"# {t('app.title')}\n{t('app.intro')}", elem_id="intro")
        gr.HTML(f"<p>{t('app.language')}: {switch}</p>", elem_id="lang-switch")
        view.state = gr.State(wizard_job())  # the page's one job; every step edits it
        with gr.Tabs():
            with gr.Tab(t("app.tab_base"), elem_id="tab-base"):
                build_base_step(t, ws, view)
            with gr.Tab(t("app.tab_dataset"), elem_id="tab-dataset"):
                build_dataset_step(t, ws, view)
            with gr.Tab(t("app.tab_method"), elem_id="tab-method"):
                build_method_step(t, ws, view, tier.name, tier.describe(t))
            with gr.Tab(t("app.tab_train"), elem_id="tab-train"):
                saved = build_train_step(t, ws, runner, view)
            with gr.Tab(t("app.tab_compare"), elem_id="tab-compare"):
                picked = build_compare_tab(t, ws, runner, saved, view)
            with gr.Tab(t("app.tab_export"), elem_id="tab-export"):
                build_export_step(t, ws, picked, view)
        view.wire()
        demo_text = gr.Textbox(visible=False)
        gr.Button("Default job", visible=False).click(default_job_text, None, demo_text, api_name="default_job")
    return app


def build_server(lang: str | None = None, tier=None,
                 credentials: tuple[str, str] | None = None, runner=None,
                 workspace=None, allowed_hosts: set[str] | None = None):
    """One web server with the wizard in every language at /<lang>/ (all sharing one job
    runner, so a job started in one language shows in the other); / sends the browser to its own
    language, or to ``lang`` (--lang) when given.

    Every request passes webapp.security.RequestGuard (Host and Origin must be this server's:
    ``allowed_hosts``, default the loopback names); no CORS headers are sent; uploads count only
    when Gradio itself received them; paths are checked by ``workspace``."""
    import gradio as gr
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, RedirectResponse
    from starlette.middleware.cors import CORSMiddleware

    from engine.training.jobs import JobRunner
    from webapp.security import LOOPBACK_NAMES, RequestGuard, Workspace

    if lang is not None and lang not in LANGUAGES:
        raise ValueError(f"--lang must be one of {', '.join(LANGUAGES)}")
    runner = runner or JobRunner()
    tier = tier or hardware_tier()  # probed once for every language
    ws = workspace or Workspace.for_app()
    if ws.exposed and credentials is None:
        raise ValueError("an exposed server needs credentials (--auth user:password)")
    api = FastAPI()
    # A CORS middleware of our own that allows no other origin: Gradio then adds none of its own
    # (it would echo any Origin for a request whose Host is not a loopback name)
    api.add_middleware(CORSMiddleware, allow_origins=[])
    api.add_middleware(RequestGuard, allowed_hosts=set(allowed_hosts or LOOPBACK_NAMES))

    def root(request):
        return RedirectResponse(f"./{pick_language(request.headers.get('accept-language'), lang)}/")
    root.__annotations__["request"] = Request  # a real class: FastAPI injects the request by type
    api.get("/")(root)
    api.get("/favicon.ico")(lambda: FileResponse(FAVICON, media_type="image/png"))  # browsers ask the root

    for code in LANGUAGES:
        blocks = build_app(runner, tier, code, ws)
        api = gr.mount_gradio_app(api, blocks, path=f"/{code}", auth=credentials, show_error=True,
                                  allowed_paths=ws.served,  # the live list: grows as folders are used
                                  css=CSS)
        # mount_gradio_app leaves this False (only launch() sets it), and while it is False
        # Gradio skips its own check that a file argument was really uploaded
        blocks.has_launched = True
    return api


def run_server(api, host: str, port: int, block: bool = True):
    """uvicorn in this thread (``block``) or a background one; returns the uvicorn server."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning"))
    if block:
        server.run()
        return server
    thread = threading.Thread(target=server.run, name="loraforge-web", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    return server


def quiet_libraries() -> None:
    """Keep library chatter that means nothing to a user off the server's terminal (an optional
    CPU kernel bitsandbytes cannot find, image processors that want torchvision, which LoRA
    Forge does not use); errors still show, and so do our own progress lines."""
    import logging
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def serve(host: str = "127.0.0.1", port: int = 7860, open_browser: bool = True,
          listen: bool = False, auth: str | None = None, block: bool = True, lang: str | None = None,
          workspace: list[str] | None = None, allowed_host: list[str] | None = None):
    """Start the app. Beyond 127.0.0.1 (``listen``, or a non-loopback ``host``) ``auth`` is
    required and web requests may only use paths inside the workspace roots (``workspace``
    adds folders to the app's own)."""
    from webapp.security import Workspace, allowed_host_names, is_loopback

    quiet_libraries()
    try:
        credentials = parse_auth(auth)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if lang is not None and lang not in LANGUAGES:
        print(f"error: --lang must be one of {', '.join(LANGUAGES)}", file=sys.stderr)
        return 2
    if listen:
        host = "0.0.0.0"
    exposed = not is_loopback(host)
    if exposed and credentials is None:
        print(f"error: serving on {host} exposes the app to your network; add --auth user:password",
              file=sys.stderr)
        return 2
    port = find_free_port(host, port)
    tier = hardware_tier()
    print(f"hardware: {tier.reason}\npreset tier: {tier.name}")
    ws = Workspace.for_app(exposed, workspace or ())
    if exposed:
        print("exposed mode: web requests may use these folders only: "
              + ", ".join(str(r) for r in ws.roots))
    api = build_server(lang, tier, credentials, workspace=ws,
                       allowed_hosts=allowed_host_names(host, allowed_host or ()))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"
    print(f"LoRA Forge running at {url}")
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.5, lambda: webbrowser.open(url)).start()
    server = run_server(api, host, port, block)
    return server if not block else 0
