"""The dataset step's tools: a resized/cropped working copy, and automatic captions (WD14 tags or
BLIP sentences). The originals are never changed: preprocessing writes a new folder."""
from __future__ import annotations

from engine.i18n import EN, Translator, describe_error
from webapp.security import LOCAL, PathNotAllowed, Workspace


def preprocess_copy(path: str, resolution: float, crop: str, flip: bool, progress=None,
                    t: Translator = EN, ws: Workspace = LOCAL) -> tuple[str, str]:
    """(new dataset folder or "", message). The copy goes beside the source: ``<name>-<res>px``."""
    from engine.data.folder import DatasetError, scan_dataset
    from engine.data.preprocess import PreprocessOptions, preprocess_dataset

    res = int(resolution)
    if res < 64 or res % 64:
        return "", t("tools.bad_size")
    tick = (lambda done, total: progress((done, total), desc="preprocess")) if progress else None
    try:
        src = ws.path(path)
        dest = ws.path(src.parent / f"{src.name}-{res}px")
        report = preprocess_dataset(scan_dataset(src), dest, PreprocessOptions(
            resolution=res, crop=crop, flip_copies=bool(flip)), tick)
    except (DatasetError, OSError, ValueError) as err:
        return "", t("tools.error", error=describe_error(err, t))
    return str(dest), t("tools.prep_done", written=len(report.written), folder=dest)


def auto_caption(path: str, method: str, model: str, threshold: float, mode: str, trigger: str,
                 progress=None, t: Translator = EN, ws: Workspace = LOCAL) -> str:
    """Caption every image of the folder; ``model``: hub id or local folder (empty = default)."""
    from engine.captioning.run import caption_images, dataset_images, load_captioner
    from engine.captioning.sources import CaptionModelError

    try:
        images = dataset_images(ws.path(path))
        model = ws.model(model)
    except PathNotAllowed as err:
        return t("tools.error", error=describe_error(err, t))
    if not images:
        return t("tools.error", error=t("tools.no_images", folder=path))
    try:
        captioner, opts = load_captioner(method, model, threshold=float(threshold))
    except CaptionModelError as err:
        return t("tools.error", error=describe_error(err, t))
    tick = (lambda done, total: progress((done, total), desc="captions")) if progress else None
    report = caption_images(images, captioner, opts, mode, trigger.strip(), tick)
    return t("tools.captions_done", written=len(report.written), kept=len(report.kept))


def build_dataset_tools(t: Translator, ws: Workspace, path, trigger, refresh, refresh_outputs: list, job):
    """Widgets for both tools; ``refresh(folder, job)`` gives the new values of
    ``refresh_outputs`` (the step's report, gallery, ...) after a tool changed the dataset.
    Returns (button, handler, inputs, message box) of the working copy: its new folder becomes
    the job's dataset, so the caller registers it with the job's views as outputs."""
    import gradio as gr

    with gr.Accordion(t("tools.title"), open=False):
        gr.Markdown(t("tools.prep_help"))
        with gr.Row():
            res = gr.Number(512, label=t("tools.size"), precision=0, elem_id="prep-size")
            crop = gr.Dropdown(["center", "focal", "bucket"], value="center", label=t("tools.crop"))
            flip = gr.Checkbox(False, label=t("tools.flip"))
            prep = gr.Button(t("tools.prep"), elem_id="prep-run")
        gr.Markdown(t("tools.caption_help"))
        with gr.Row():
            method = gr.Dropdown(["wd14", "blip"], value="wd14", label=t("tools.captioner"), elem_id="cap-method")
            model = gr.Textbox("", label=t("tools.model"), elem_id="cap-model")
            threshold = gr.Number(0.35, label=t("tools.threshold"), info=t("tools.threshold_info"))
            mode = gr.Dropdown(["skip", "overwrite", "append"], value="skip",
                               label=t("tools.mode"))
            run = gr.Button(t("tools.run"), elem_id="cap-run")
        message = gr.Textbox(label=t("tools.message"), interactive=False, elem_id="prep-message")

    def do_prep(folder, r, c, f, j, progress=gr.Progress()):
        """(message, *refresh_outputs, the new folder or None)."""
        new, note = preprocess_copy(folder, r, c, f, progress, t, ws)
        if not new:
            return (note, *(gr.skip() for _ in refresh_outputs), None)
        return (note, *refresh(new, j), new)

    def do_caption(folder, meth, mdl, th, md, trig, j, progress=gr.Progress()):
        return (auto_caption(folder, meth, mdl, th, md, trig, progress, t, ws),) + tuple(refresh(folder, j))

    run.click(do_caption, [path, method, model, threshold, mode, trigger, job], [message, *refresh_outputs],
              api_name="auto_caption")
    return prep, do_prep, [path, res, crop, flip, job], message
