"""Wizard steps 1 and 2: the base model and the dataset (Gradio wiring over the engine)."""
from __future__ import annotations

from pathlib import Path

from webapp.dataset_tools import build_dataset_tools
from webapp.wizard_logic import demo_job, output_root, describe_base, scan_models, summarize_dataset



def build_base_step():
    """Returns the base-model textbox (later steps read it)."""
    import gradio as gr

    gr.Markdown("### 1. Base model\nThe model your LoRA is trained on, and later used with. "
                "`embedded` is the tiny built-in *shapes* model: it runs on any CPU in minutes. "
                "For real work choose the model you generate with: a `.safetensors` file (A1111 / "
                "Civitai), a diffusers folder, or a Hugging Face id such as "
                "`stable-diffusion-v1-5/stable-diffusion-v1-5`.")
    with gr.Row():
        folder = gr.Textbox("", label="Models folder (e.g. A1111's models/Stable-diffusion)",
                            elem_id="models-folder")
        scan = gr.Button("Scan folder", elem_id="scan-models")
    found = gr.Dropdown([], label="Models found", allow_custom_value=True, elem_id="models-found")
    base = gr.Textbox(demo_job()["model"]["base"], label="Base model (path, hub id or embedded)",
                      elem_id="base-model")
    detect = gr.Button("Detect type", elem_id="detect-base")
    kind = gr.Textbox(describe_base("embedded"), label="Detected", interactive=False,
                      elem_id="base-kind")

    def do_scan(path):
        models = scan_models(path)
        note = f"{len(models)} model(s) found" if models else "no .safetensors or diffusers models there"
        return gr.Dropdown(choices=models, value=models[0] if models else None), note

    scan.click(do_scan, folder, [found, kind], api_name="scan_models")
    found.change(lambda v: v or gr.skip(), found, base, api_visibility="private")
    detect.click(describe_base, base, kind, api_name="detect_base")
    return base


def build_dataset_step():
    """Returns (dataset path textbox, images-per-epoch number) for the later steps."""
    import gradio as gr

    from engine.data.importer import import_concept, safe_filename

    job = demo_job()
    first = summarize_dataset(job["dataset"]["path"])
    gr.Markdown("### 2. Dataset\nA folder in kohya layout: subfolders named `N_name` (N = repeats "
                "per epoch), each image with a caption `.txt` beside it. Upload images to make one, "
                "or point at an existing folder. 15-50 varied images of one concept are typical; "
                "repeats x images of about 100-200 per epoch is a good start.")
    with gr.Row():
        uploads = gr.File(file_count="multiple", label="Upload images (or a .zip)", elem_id="upload")
        with gr.Column():
            concept = gr.Textbox("mychar", label="Concept name", elem_id="concept-name")
            repeats = gr.Number(10, label="Repeats", precision=0, minimum=1,
                                info="How often each image is seen per epoch; fewer images = more repeats.")
            make = gr.Button("Import into a new dataset", elem_id="import-dataset")
    path = gr.Textbox(job["dataset"]["path"], label="Dataset folder", elem_id="dataset-path")
    check = gr.Button("Check dataset", elem_id="check-dataset")
    report = gr.Textbox(first.text, label="Dataset report", lines=5, interactive=False,
                        elem_id="dataset-report")
    per_epoch = gr.Number(first.num_per_epoch, visible=False)
    gallery = gr.Gallery(first.images, label="Images", columns=8, height=220, elem_id="dataset-gallery")
    with gr.Accordion("Captions and trigger word", open=False):
        gr.Markdown("The trigger word goes at the front of every caption. Tags you leave in a "
                    "caption become changeable in prompts; what you leave out is absorbed into "
                    "the trigger word.")
        with gr.Row():
            trigger = gr.Textbox("zkz", label="Trigger word", elem_id="dataset-trigger")
            add_trigger = gr.Button("Add to all captions", elem_id="add-trigger")
        image = gr.Dropdown(first.images, label="Image", elem_id="caption-image")
        caption = gr.Textbox("", label="Caption", elem_id="caption-text")
        save_caption = gr.Button("Save caption", elem_id="save-caption")
        cap_msg = gr.Textbox(label="Caption message", interactive=False)

    def do_check(folder):
        s = summarize_dataset(folder)
        return s.text, s.images, s.num_per_epoch, gr.Dropdown(choices=s.images, value=None)

    def do_import(files, name, reps):
        if not files:
            return gr.skip(), "upload some images (or a .zip) first", gr.skip(), gr.skip(), gr.skip()
        name = safe_filename(name or "concept")
        sources = [Path(f if isinstance(f, str) else f.name) for f in files]
        source = sources[0] if len(sources) == 1 and sources[0].suffix.lower() == ".zip" else sources
        try:
            rep = import_concept(source, output_root() / "datasets" / name, name, int(reps or 1))
        except (OSError, ValueError) as err:
            return gr.skip(), f"import failed: {err}", gr.skip(), gr.skip(), gr.skip()
        folder = str(output_root() / "datasets" / name)
        s = summarize_dataset(folder)
        return folder, rep.summary() + "\n" + s.text, s.images, s.num_per_epoch, gr.Dropdown(choices=s.images)

    def do_add_trigger(folder, word):
        from engine.data.folder import DatasetError, scan_dataset
        from engine.data.tags import add_front, apply_to_captions

        if not word.strip():
            return "write a trigger word first"
        try:
            index = scan_dataset(Path(folder))
        except (DatasetError, OSError) as err:
            return str(err)
        files = []
        for it in index.items:
            txt = it.path.with_suffix(".txt")
            if not txt.is_file():
                txt.write_text(it.caption, encoding="utf-8")
            files.append(txt)
        changed = apply_to_captions(files, add_front(word.strip()))
        return f"trigger word '{word.strip()}' is now first in {len(files)} captions ({changed} changed)"

    def load_caption(img):
        txt = Path(img).with_suffix(".txt") if img else None
        return txt.read_text(encoding="utf-8") if txt and txt.is_file() else ""

    def store_caption(img, text):
        from engine.fileio import atomic_write

        if not img:
            return "choose an image first"
        txt = Path(img).with_suffix(".txt")
        atomic_write(txt, lambda tmp: tmp.write_text(text.strip(), encoding="utf-8"))
        return f"saved {txt.name}"

    check.click(do_check, path, [report, gallery, per_epoch, image], api_name="check_dataset")
    build_dataset_tools(path, trigger, do_check, [report, gallery, per_epoch, image])
    make.click(do_import, [uploads, concept, repeats], [path, report, gallery, per_epoch, image],
               api_name="import_dataset")
    add_trigger.click(do_add_trigger, [path, trigger], cap_msg, api_name="add_trigger")
    image.change(load_caption, image, caption, api_name="load_caption")
    save_caption.click(store_caption, [image, caption], cap_msg, api_name="save_caption")
    return path, per_epoch, trigger
