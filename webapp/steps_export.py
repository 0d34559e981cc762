"""Wizard step 6: the model card folder (model, A1111 sidecar, samples, README, card.json) and a
shareable preset of the job's settings."""
from __future__ import annotations

from pathlib import Path

from engine.i18n import EN, Translator, describe_error
from webapp.security import LOCAL, PathNotAllowed, Workspace
from webapp.wizard_logic import output_root


def export_card_files(model: str, out_dir: str, description: str, license_id: str,
                      sample_count: float, progress=None, t: Translator = EN, ws: Workspace = LOCAL):
    """(message, card README text, sidecar JSON text, the card folder as a .zip, the model file)."""
    from pydantic import ValidationError

    from engine.export.card import SampleSettings, export_card, load_job_for
    from engine.export.card_facts import CardError
    from engine.export.card_render import CardInfo
    from engine.models.loader import ModelLoadError

    try:
        path = ws.path(model) if model.strip() else Path("")
        folder = ws.path(out_dir.strip() or output_root() / "export")
    except PathNotAllowed as err:
        return t("export.error", error=describe_error(err, t)), "", "", None, None
    if not path.is_file():
        return t("export.missing", path=path), "", "", None, None
    try:
        info = CardInfo(description=description.strip(), license=license_id.strip() or "creativeml-openrail-m")
        tick = (lambda done, total: progress((done, total), desc="samples")) if progress else None
        job = load_job_for(path)  # the run's job beside its files: its base model and sample settings
        if job is not None:
            ws.job(job)  # (an exposed server: the job's base must be inside the workspace too)
        out = export_card(path, folder, info, job=job,
                          samples=SampleSettings.usual(job, None, int(sample_count)), local_files_only=True,
                          progress=tick, lang=t.lang)
        archive = zip_folder(out.folder)
    except (ValidationError, ModelLoadError, CardError, ValueError, OSError) as err:
        return t("export.error", error=describe_error(err, t)), "", "", None, None
    ws.serve(out.folder.parent)
    readme = out.files.get("readme")
    sidecar = out.files.get("sidecar")
    return (t("export.written", folder=out.folder, files=len(out.files), samples=len(out.samples)),
            readme.read_text(encoding="utf-8") if readme else "",
            sidecar.read_text(encoding="utf-8") if sidecar else "", str(archive), str(out.model))


def zip_folder(folder: Path) -> Path:
    """``<folder>.zip`` beside it (written atomically): the card folder in one download."""
    import zipfile

    from engine.fileio import atomic_write

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for item in sorted(folder.rglob("*")):
                if item.is_file():
                    zf.write(item, Path(folder.name) / item.relative_to(folder))
    return atomic_write(folder.with_suffix(".zip"), write)


def preset_from_job(job: dict, name: str, author: str, description: str, t: Translator = EN):
    """(preset TOML, one-line share code) or an error in the first field."""
    from engine.config.job import ConfigError, parse_config
    from engine.config.preset_share import PresetError, export_preset, to_code

    try:
        cfg = parse_config(job)
        text = export_preset(cfg, name.strip() or cfg.output.name, author.strip(), description.strip())
    except (ConfigError, PresetError) as err:
        return t("export.error", error=describe_error(err, t)), ""
    return text, to_code(text)


def build_export_step(t: Translator, ws: Workspace, picked, view):
    import gradio as gr

    gr.Markdown(t("export.title"))
    model = gr.Textbox(label=t("export.model"), elem_id="export-model")
    picked.change(lambda p: p, picked, model, api_visibility="private")
    with gr.Row():
        description = gr.Textbox("", label=t("export.description"), elem_id="export-description")
        license_id = gr.Textbox("creativeml-openrail-m", label=t("export.license"))
        count = gr.Number(2, label=t("export.samples"), precision=0, minimum=0)
    out_dir = gr.Textbox(str(output_root() / "export"), label=t("export.folder"))
    go = gr.Button(t("export.write"), variant="primary", elem_id="write-card")
    message = gr.Textbox(label=t("export.message"), interactive=False, elem_id="export-message")
    with gr.Row():
        card_zip = gr.File(label=t("export.download_card"), interactive=False, elem_id="card-zip")
        model_file = gr.File(label=t("export.download_model"), interactive=False, elem_id="model-file")
    with gr.Row():
        readme = gr.Code(label=t("export.readme"), language="markdown", elem_id="card-readme")
        sidecar = gr.Code(label=t("export.sidecar"), language="json", elem_id="card-sidecar")

    def run(m, o, d, lic, c, progress=gr.Progress()):
        return export_card_files(m, o, d, lic, c, progress, t, ws)

    go.click(run, [model, out_dir, description, license_id, count],
             [message, readme, sidecar, card_zip, model_file], api_name="export_card")
    with gr.Accordion(t("export.share"), open=False):
        with gr.Row():
            p_name = gr.Textbox("", label=t("export.preset_name"), elem_id="preset-name")
            p_author = gr.Textbox("", label=t("export.author"))
            p_desc = gr.Textbox("", label=t("export.good_for"))
        share = gr.Button(t("export.make_preset"), elem_id="make-preset")
        preset = gr.Code(label=t("export.preset"), language=None, elem_id="preset-toml")
        code = gr.Textbox(label=t("export.code"), interactive=False, buttons=["copy"], elem_id="preset-code")
        share.click(lambda *a: preset_from_job(*a, t=t), [view.state, p_name, p_author, p_desc], [preset, code],
                    api_name="export_preset")
