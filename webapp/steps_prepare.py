"""Wizard steps 1 and 2: the base model and the dataset (Gradio wiring over the engine). Both
edit the page's one job (webapp.job_view.JobView)."""
from __future__ import annotations

from pathlib import Path

from engine.i18n import Translator, describe_error
from webapp.dataset_tools import build_dataset_tools
from webapp.job_view import CONCURRENCY, with_dataset
from webapp.security import PathNotAllowed, Workspace
from webapp.wizard_logic import DatasetSummary, describe_base, output_root, scan_models, summarize_dataset, wizard_job


def build_base_step(t: Translator, ws: Workspace, view) -> None:
    """The base-model box edits the job (view.base); a scanned model chosen in the list too."""
    import gradio as gr

    gr.Markdown(t("base.title"))
    with gr.Row():
        folder = gr.Textbox("", label=t("base.folder"), elem_id="models-folder")
        scan = gr.Button(t("base.scan"), elem_id="scan-models")
    found = gr.Dropdown([], label=t("base.found"), allow_custom_value=True, elem_id="models-found")
    view.base = gr.Textbox(wizard_job()["model"]["base"], label=t("base.model"), elem_id="base-model")
    detect = gr.Button(t("base.detect"), elem_id="detect-base")
    kind = gr.Textbox(describe_base("embedded", t), label=t("base.detected"), interactive=False,
                      elem_id="base-kind")

    def do_scan(path):
        try:
            models = scan_models(str(ws.path(path)))
        except PathNotAllowed as err:
            return gr.Dropdown(choices=[], value=None), describe_error(err, t)
        note = t("base.n_found", n=len(models)) if models else t("base.none_found")
        return gr.Dropdown(choices=models, value=models[0] if models else None), note

    def do_detect(b):
        try:
            return describe_base(ws.model(b), t)
        except PathNotAllowed as err:
            return t("base.cannot_use", error=describe_error(err, t))

    def chosen(job, model):
        return view.render(view.set_base(job, model), before=job) if model else [gr.skip()] * len(view.outputs())

    scan.click(do_scan, folder, [found, kind], api_name="scan_models")
    view.later.append(lambda: found.change(chosen, [view.state, found], view.outputs(), api_visibility="private",
                                           **CONCURRENCY))
    detect.click(do_detect, view.base, kind, api_name="detect_base")


def build_dataset_step(t: Translator, ws: Workspace, view) -> None:
    """Upload / import / check / caption a dataset; its folder (view.dataset) edits the job."""
    import gradio as gr

    from engine.data.folder import read_caption
    from engine.data.importer import import_concept, safe_filename

    job = wizard_job()
    first = summarize_dataset(job["dataset"]["path"], t, job["dataset"]["resolution"])
    gr.Markdown(t("dataset.title"))
    with gr.Row():
        uploads = gr.File(file_count="multiple", label=t("dataset.upload"), elem_id="upload")
        with gr.Column():
            concept = gr.Textbox("mychar", label=t("dataset.concept"), elem_id="concept-name")
            repeats = gr.Number(10, label=t("dataset.repeats"), precision=0, minimum=1, elem_id="repeats",
                                info=t("dataset.repeats_info"))
            make = gr.Button(t("dataset.import"), elem_id="import-dataset")
    view.dataset = path = gr.Textbox(job["dataset"]["path"], label=t("dataset.folder"), elem_id="dataset-path")
    listed = gr.State(first.images)  # the gallery's files in order (a click gives an index)
    check = gr.Button(t("dataset.check"), elem_id="check-dataset")
    report = gr.Textbox(first.text, label=t("dataset.report"), lines=8, interactive=False,
                        elem_id="dataset-report")
    gallery = gr.Gallery(gallery_items(first), label=t("dataset.images"), columns=8, height=260,
                         allow_preview=False, elem_id="dataset-gallery")
    with gr.Accordion(t("dataset.captions_title"), open=False):
        gr.Markdown(t("dataset.captions_help"))
        with gr.Row():
            trigger = gr.Textbox("zkz", label=t("dataset.trigger"), elem_id="dataset-trigger")
            add_trigger = gr.Button(t("dataset.add_trigger"), elem_id="add-trigger")
        first_image = first.images[0] if first.images else None
        image = gr.Dropdown(first.images, value=first_image, label=t("dataset.image"), elem_id="caption-image")
        caption = gr.Textbox((read_caption(Path(first_image)) or "") if first_image else "",
                             label=t("dataset.caption"), elem_id="caption-text")
        confirm_empty = gr.Checkbox(False, label=t("dataset.confirm_empty"), elem_id="confirm-empty")
        save_caption = gr.Button(t("dataset.save_caption"), elem_id="save-caption")
        cap_msg = gr.Textbox(label=t("dataset.caption_message"), interactive=False, elem_id="caption-message")

    def look(folder: str, job: dict) -> DatasetSummary:
        """The dataset as the job's training will see it; its folder now served (the gallery)."""
        try:
            ws.path(folder)
        except PathNotAllowed as err:
            return DatasetSummary(t("dataset.cannot_use", error=describe_error(err, t)), [], 0, 0)
        ws.serve(folder)
        d = job.get("dataset", {})
        return summarize_dataset(folder, t, d.get("resolution", 512), d.get("default_repeats", 1),
                                 d.get("caption_extension", ".txt"))

    def do_check(folder, job):
        s = look(folder, job)
        selected = s.images[0] if s.images else None
        return s.text, gallery_items(s), gr.Dropdown(choices=s.images, value=selected), s.images

    def do_import(files, name, reps, job):
        """(report, gallery, image, listed, the new folder or None)."""
        if not files:
            return t("dataset.upload_first"), gr.skip(), gr.skip(), gr.skip(), None
        name = safe_filename(name or "concept")
        sources = [Path(f if isinstance(f, str) else f.name) for f in files]
        source = sources[0] if len(sources) == 1 and sources[0].suffix.lower() == ".zip" else sources
        try:
            rep = import_concept(source, output_root() / "datasets" / name, name, int(reps or 1))
        except (OSError, ValueError) as err:
            return t("dataset.import_failed", error=describe_error(err, t)), gr.skip(), gr.skip(), gr.skip(), None
        folder = str(output_root() / "datasets" / name)
        s = look(folder, job)
        note = t("dataset.imported", images=len(rep.copied), captions=rep.captions, folder=rep.folder,
                 skipped=len(rep.skipped), renamed=len(rep.renamed))
        note += "".join("\n" + t("dataset.skipped_file", name=n, why=t(f"dataset.skip_{why}"))
                        for n, why in rep.skipped[:20])
        if len(rep.skipped) > 20:
            note += "\n" + t("dataset.skipped_more", n=len(rep.skipped) - 20)
        note += "".join("\n" + t("dataset.renamed_file", old=old, new=new) for old, new in rep.renamed[:20])
        selected = s.images[0] if s.images else None
        return note + "\n" + s.text, gallery_items(s), gr.Dropdown(choices=s.images, value=selected), s.images, folder

    def do_add_trigger(folder, word):
        from engine.data.folder import DatasetError, scan_dataset
        from engine.data.tags import add_front, apply_to_captions
        from engine.fileio import atomic_write_bytes

        if not word.strip():
            return t("dataset.trigger_first")
        try:
            index = scan_dataset(ws.path(folder))
        except (DatasetError, OSError, PathNotAllowed) as err:
            return describe_error(err, t)
        files = []
        for it in index.items:
            txt = it.path.with_suffix(".txt")
            if not txt.is_file():  # the folder-name caption it trains on, made editable
                atomic_write_bytes(txt, it.caption.encode("utf-8"))
            files.append(txt)
        changed = apply_to_captions(files, add_front(word.strip()))
        return t("dataset.trigger_done", word=word.strip(), n=len(files), changed=changed)

    def load_caption(img):
        try:
            text = (read_caption(ws.path(img)) or "") if img else ""
        except PathNotAllowed:
            text = ""
        return text, False

    def store_caption(img, text, really_empty):
        from engine.fileio import atomic_write

        if not img:
            return t("dataset.choose_image")
        try:
            txt = ws.path(img).with_suffix(".txt")
        except PathNotAllowed as err:
            return describe_error(err, t)
        old = read_caption(Path(img)) or ""
        if not text.strip() and old.strip() and not really_empty:  # never wipe words silently
            return t("dataset.caption_kept", name=txt.name)
        atomic_write(txt, lambda tmp: tmp.write_text(text.strip(), encoding="utf-8"))
        return t("dataset.caption_saved", name=txt.name)

    def clicked(images, evt):
        """A click on a thumbnail selects that image for the caption editor."""
        return images[evt.index] if images and 0 <= evt.index < len(images) else gr.skip()
    clicked.__annotations__["evt"] = gr.SelectData  # (Gradio finds the event by a real class)

    shown = [report, gallery, image, listed]
    check.click(do_check, [path, view.state], shown, api_name="check_dataset")
    prep, do_prep, prep_inputs, prep_message = build_dataset_tools(t, ws, path, trigger, do_check, shown,
                                                                   view.state)

    def with_job(results: tuple, job: dict) -> tuple:
        """A tool's results; its new folder (the last one, None if nothing was made) becomes the
        job's dataset and every view of the job follows."""
        *said, folder = results
        if folder is None:
            return (*said, *([gr.skip()] * len(view.outputs())))
        return (*said, *view.render(with_dataset(job, folder), before=job))

    def import_then_job(files, name, reps, job):
        return with_job(do_import(files, name, reps, job), job)

    def prep_then_job(folder, r, c, f, job, progress=gr.Progress()):
        return with_job(do_prep(folder, r, c, f, job, progress), job)

    view.later.append(lambda: make.click(import_then_job, [uploads, concept, repeats, view.state],
                                         [*shown, *view.outputs()], api_name="import_dataset", **CONCURRENCY))
    view.later.append(lambda: prep.click(prep_then_job, prep_inputs, [prep_message, *shown, *view.outputs()],
                                         api_name="preprocess", **CONCURRENCY))
    add_trigger.click(do_add_trigger, [path, trigger], cap_msg, api_name="add_trigger")
    image.change(load_caption, image, [caption, confirm_empty], api_name="load_caption")
    gallery.select(clicked, listed, image, api_visibility="private")
    save_caption.click(store_caption, [image, caption, confirm_empty], cap_msg, api_name="save_caption")


def gallery_items(s: DatasetSummary) -> list[tuple[str, str | None]]:
    """The gallery's (image, caption): a file training leaves out says why."""
    return [(p, s.labels.get(p)) for p in s.images]
