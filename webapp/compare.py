"""The web app's compare step: the XYZ grid over saved files (LoRA / LyCORIS epochs, hypernetworks,
embeddings, aesthetic embeddings) x weights, with one fixed seed.

The grid runs in the click handler (Gradio queues it) but is refused while a training job runs:
both would fight over the same cores or GPU. The base is loaded fresh per grid because swapping
networks changes the loaded model.
"""
from __future__ import annotations

import time
from pathlib import Path

from webapp.wizard_logic import output_root

ROOT = Path(__file__).resolve().parent.parent


def make_grid(runner, base: str, files: str, prompts: str, weights: str, seed: float, size: float,
              steps: float, cfg: float, out_dir: str, a_steps: float, a_lr: float, a_slerp: bool,
              a_text: str, a_clip: str, progress=None):
    """(grid image path, cell image paths, message)."""
    from pydantic import ValidationError

    from engine.aesthetic import AestheticSettings
    from engine.grid import GridError, GridJob, parse_weights, run_grid
    from engine.models.loader import ModelLoadError, load_sd_components

    if runner.running:
        return None, [], "a training job is running; make the grid when it has finished"
    try:
        paths = [Path(line.strip()) for line in files.splitlines() if line.strip()]
        if not paths:
            raise GridError("list the files to compare, one per line")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise GridError(f"file not found: {missing[0]}")
        prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not prompt_list:
            raise GridError("write at least one prompt")
        aesthetic = AestheticSettings(steps=int(a_steps), lr=float(a_lr), slerp=bool(a_slerp),
                                      text=a_text or "", clip=a_clip.strip() or None)
        job = GridJob(checkpoints=paths, prompts=prompt_list, weights=parse_weights(weights),
                      seeds=[int(seed)], steps=int(steps), cfg_scale=float(cfg), width=int(size),
                      height=int(size), aesthetic=aesthetic)
        model = load_sd_components(base.strip() or "embedded")
        out = Path(out_dir.strip() or output_root() / "grid") / time.strftime("%Y%m%d-%H%M%S")
        tick = (lambda done, total: progress((done, total), desc="grid")) if progress else None
        result = run_grid(model, job, out, tick)
    except (GridError, ModelLoadError, ValidationError, ValueError, OSError) as err:
        return None, [], f"error: {err}"
    cells = [str(result.cells[key]) for key in sorted(result.cells)]
    return str(result.grids[0]), cells, f"saved {len(result.grids)} grid(s) and {len(cells)} cells in {out}"


def cell_choice(files: str, weights: str, prompts: str, index: float) -> tuple[str, float]:
    """(file, weight) of the gallery's ``index``-th cell; cells are ordered by (row = file,
    column = weight, z = prompt), as make_grid returns them."""
    from engine.grid import parse_weights

    paths = [line.strip() for line in files.splitlines() if line.strip()]
    ws = parse_weights(weights)
    nz = max(len([p for p in prompts.splitlines() if p.strip()]), 1)
    i = int(index)
    if not paths or not 0 <= i < len(paths) * len(ws) * nz:
        raise ValueError("that cell is not in the current grid; make the grid again")
    return paths[i // (len(ws) * nz)], ws[(i // nz) % len(ws)]


def keep_pick(file: str, weight: float, name: str, out_dir: str) -> tuple[str, str]:
    """Copy the chosen file as ``<name>`` with its preferred weight recorded; (path, message)."""
    from engine.data.importer import safe_filename
    from engine.export.pick import pick_checkpoint

    if not file or not Path(file).is_file():
        return "", "click a cell of the grid first"
    name = safe_filename(name.strip() or Path(file).stem + "-picked")
    dest = Path(out_dir.strip() or output_root() / "picked") / f"{name}{Path(file).suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = pick_checkpoint(Path(file), dest, float(weight))
    except (OSError, ValueError, RuntimeError) as err:
        return "", f"error: {err}"
    return str(path), f"kept {Path(file).name} at weight {float(weight):g} as {path}"


def build_compare_tab(runner, saved_files=None):
    """Widgets + events of the compare step; call inside a ``gr.Blocks`` context. Returns the
    picked-file textbox (the export step starts from it)."""
    import gradio as gr

    gr.Markdown("### 5. Compare\nEach saved file (epoch) is a row, each weight a column, all with "
                "the same seed. Click the cell that looks best to pick that epoch and weight. "
                "Usually the best file is not the last one: later epochs start copying the "
                "training images; a good LoRA still looks right at weight 0.6-0.8.")
    with gr.Row():
        base = gr.Textbox("embedded", label="Base model", elem_id="grid-base")
        out_dir = gr.Textbox(str(output_root() / "grid"), label="Save grids in", elem_id="grid-out")
    files = gr.Textbox(lines=4, label="Files (one per line): LoRA/LyCORIS .safetensors, "
                       "hypernetwork .pt, embeddings, aesthetic embeddings", elem_id="grid-files")
    if saved_files is not None:
        use = gr.Button("Use the files saved by training", elem_id="use-run-files")
        use.click(lambda text: text, saved_files, files, api_name="use_run_files")
    prompts = gr.Textbox("zkz, a star on a white background", lines=2,
                         label="Prompts (one per line: one grid each)", elem_id="grid-prompts")
    with gr.Row():
        weights = gr.Textbox("0, 0.5, 1", label="Weights (list or range 0.4-1.0(+0.2))",
                             elem_id="grid-weights")
        seed = gr.Number(42, label="Seed", precision=0)
        size = gr.Number(64, label="Size (px)", precision=0)
        steps = gr.Number(20, label="Sampling steps", precision=0)
        cfg = gr.Number(7.0, label="CFG scale")
    with gr.Accordion("Aesthetic embeddings (only for aesthetic embedding files)", open=False):
        gr.Markdown("The text encoder is nudged toward the images' style for a few steps per "
                    "prompt, then put back. Small weights (up to about 0.25) change the look "
                    "without changing the content.")
        with gr.Row():
            a_steps = gr.Number(5, label="Aesthetic steps", precision=0)
            a_lr = gr.Number(1e-4, label="Aesthetic learning rate")
            a_slerp = gr.Checkbox(False, label="Spherical blend (slerp)")
        a_text = gr.Textbox("", label="Aesthetic text (rotates the image embedding)")
        a_clip = gr.Textbox("", label="CLIP (hub id or folder; empty = recorded in the file)")
    go = gr.Button("Make grid", variant="primary", elem_id="make-grid")
    message = gr.Textbox(label="Grid message", interactive=False, elem_id="grid-message")
    grid = gr.Image(label="Grid", type="filepath", interactive=False, elem_id="grid-image")
    cells = gr.Gallery(label="Cells", columns=6, elem_id="grid-cells")

    def run(b, f, p, w, s, sz, st, c, o, ast, alr, asl, at, ac, progress=gr.Progress()):
        return make_grid(runner, b, f, p, w, s, sz, st, c, o, ast, alr, asl, at, ac, progress)

    go.click(run, [base, files, prompts, weights, seed, size, steps, cfg, out_dir,
                   a_steps, a_lr, a_slerp, a_text, a_clip], [grid, cells, message], api_name="make_grid")
    with gr.Row():
        cell = gr.Number(0, label="Cell (position in the gallery, from 0)", precision=0,
                         elem_id="cell-index")
        pick_file = gr.Textbox(label="Picked file", interactive=False, elem_id="pick-file")
        pick_weight = gr.Number(1.0, label="Picked weight", elem_id="pick-weight")
    with gr.Row():
        pick_name = gr.Textbox("", label="Save the pick as (name)", elem_id="pick-name")
        keep = gr.Button("Keep this pick", variant="primary", elem_id="keep-pick")
    picked = gr.Textbox(label="Kept file", interactive=False, elem_id="picked")
    pick_msg = gr.Textbox(label="Pick message", interactive=False, elem_id="pick-message")

    def choose(f, w, p, i):
        try:
            file, weight = cell_choice(f, w, p, i)
        except ValueError as err:
            return gr.skip(), gr.skip(), f"error: {err}"
        return file, weight, f"chosen: {Path(file).name} at weight {weight:g}"

    def on_select(f, w, p, evt):
        return (evt.index,) + tuple(choose(f, w, p, evt.index))
    # Gradio finds the event-data argument by its annotation (a real class, not a string)
    on_select.__annotations__["evt"] = gr.SelectData

    cells.select(on_select, [files, weights, prompts], [cell, pick_file, pick_weight, pick_msg],
                 api_visibility="private")
    gr.Button("Choose cell", visible=False).click(
        choose, [files, weights, prompts, cell], [pick_file, pick_weight, pick_msg], api_name="choose_cell")
    keep.click(lambda f, w, n: keep_pick(f, w, n, str(output_root() / "picked")),
               [pick_file, pick_weight, pick_name], [picked, pick_msg], api_name="keep_pick")
    return picked
