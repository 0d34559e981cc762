"""Wizard steps 1 and 2: the base model and the dataset (Gradio wiring over the engine)."""
from __future__ import annotations

from pathlib import Path

from webapp.dataset_tools import build_dataset_tools
from engine.i18n import Translator, describe_error
from webapp.security import PathNotAllowed, Workspace
from webapp.wizard_logic import (DatasetSummary, demo_job, describe_base, output_root, scan_models,
                                 summarize_dataset)


def build_base_step(t: Translator, ws: Workspace):
    """Returns the base-model textbox (later steps read it)."""
    import gradio as gr

    gr.Markdown(t("base.title"))
    with gr.Row():
        folder = gr.Textbox("", label=t("base.folder"),
                            elem_id="models-folder")
        scan = gr.Button(t("base.scan"), elem_id="scan-models")
    found = gr.Dropdown([], label=t("base.found"), allow_custom_value=True, elem_id="models-found")
    base = gr.Textbox(demo_job()["model"]["base"], label=t("base.model"),
                      elem_id="base-model")
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

    scan.click(do_scan, folder, [found, kind], api_name="scan_models")
    found.change(lambda v: v or gr.skip(), found, base, api_visibility="private")
    detect.click(do_detect, base, kind, api_name="detect_base")
    return base


def build_dataset_step(t: Translator, ws: Workspace):
    """Returns (dataset path textbox, images-per-epoch number) for the later steps."""
    import gradio as gr

    from engine.data.importer import import_concept, safe_filename

    job = demo_job()
    first = summarize_dataset(job["dataset"]["path"], t)
    gr.Markdown(t("dataset.title"))
    with gr.Row():
        uploads = gr.File(file_count="multiple", label=t("dataset.upload"), elem_id="upload")
        with gr.Column():
            concept = gr.Textbox("mychar", label=t("dataset.concept"), elem_id="concept-name")
            repeats = gr.Number(10, label=t("dataset.repeats"), precision=0, minimum=1,
                                info=t("dataset.repeats_info"))
            make = gr.Button(t("dataset.import"), elem_id="import-dataset")
    path = gr.Textbox(job["dataset"]["path"], label=t("dataset.folder"), elem_id="dataset-path")
    check = gr.Button(t("dataset.check"), elem_id="check-dataset")
    report = gr.Textbox(first.text, label=t("dataset.report"), lines=5, interactive=False,
                        elem_id="dataset-report")
    per_epoch = gr.Number(first.num_per_epoch, visible=False)
    gallery = gr.Gallery(first.images, label=t("dataset.images"), columns=8, height=220, elem_id="dataset-gallery")
    with gr.Accordion(t("dataset.captions_title"), open=False):
        gr.Markdown(t("dataset.captions_help"))
        with gr.Row():
            trigger = gr.Textbox("zkz", label=t("dataset.trigger"), elem_id="dataset-trigger")
            add_trigger = gr.Button(t("dataset.add_trigger"), elem_id="add-trigger")
        image = gr.Dropdown(first.images, label=t("dataset.image"), elem_id="caption-image")
        caption = gr.Textbox("", label=t("dataset.caption"), elem_id="caption-text")
        save_caption = gr.Button(t("dataset.save_caption"), elem_id="save-caption")
        cap_msg = gr.Textbox(label=t("dataset.caption_message"), interactive=False)

    def view(folder: str):
        """The dataset's summary, its folder now served (the gallery shows its images)."""
        try:
            ws.path(folder)
        except PathNotAllowed as err:
            return DatasetSummary(t("dataset.cannot_use", error=describe_error(err, t)), [], 0, 0)
        ws.serve(folder)
        return summarize_dataset(folder, t)

    def do_check(folder):
        s = view(folder)
        return s.text, s.images, s.num_per_epoch, gr.Dropdown(choices=s.images, value=None)

    def do_import(files, name, reps):
        if not files:
            return gr.skip(), t("dataset.upload_first"), gr.skip(), gr.skip(), gr.skip()
        name = safe_filename(name or "concept")
        sources = [Path(f if isinstance(f, str) else f.name) for f in files]
        source = sources[0] if len(sources) == 1 and sources[0].suffix.lower() == ".zip" else sources
        try:
            rep = import_concept(source, output_root() / "datasets" / name, name, int(reps or 1))
        except (OSError, ValueError) as err:
            return gr.skip(), t("dataset.import_failed", error=describe_error(err, t)), gr.skip(), gr.skip(), gr.skip()
        folder = str(output_root() / "datasets" / name)
        s = view(folder)
        note = t("dataset.imported", images=len(rep.copied), captions=rep.captions, folder=rep.folder,
                 skipped=len(rep.skipped), renamed=len(rep.renamed))
        note += "".join("\n" + t("dataset.skipped_file", name=n, why=t(f"dataset.skip_{why}"))
                        for n, why in rep.skipped[:20])
        if len(rep.skipped) > 20:
            note += "\n" + t("dataset.skipped_more", n=len(rep.skipped) - 20)
        return folder, note + "\n" + s.text, s.images, s.num_per_epoch, gr.Dropdown(choices=s.images)

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
        from engine.data.folder import read_caption

        try:
            return (read_caption(ws.path(img)) or "") if img else ""
        except PathNotAllowed:
            return ""

    def store_caption(img, text):
        from engine.fileio import atomic_write

        if not img:
            return t("dataset.choose_image")
        try:
            txt = ws.path(img).with_suffix(".txt")
        except PathNotAllowed as err:
            return describe_error(err, t)
        atomic_write(txt, lambda tmp: tmp.write_text(text.strip(), encoding="utf-8"))
        return t("dataset.caption_saved", name=txt.name)

    check.click(do_check, path, [report, gallery, per_epoch, image], api_name="check_dataset")
    build_dataset_tools(t, ws, path, trigger, do_check, [report, gallery, per_epoch, image])
    make.click(do_import, [uploads, concept, repeats], [path, report, gallery, per_epoch, image],
               api_name="import_dataset")
    add_trigger.click(do_add_trigger, [path, trigger], cap_msg, api_name="add_trigger")
    image.change(load_caption, image, caption, api_name="load_caption")
    save_caption.click(store_caption, [image, caption], cap_msg, api_name="save_caption")
    return path, per_epoch, trigger
