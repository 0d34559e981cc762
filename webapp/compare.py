"""The web app's compare step: the XYZ grid over saved files (LoRA / LyCORIS epochs, hypernetworks,
embeddings, aesthetic embeddings) x weights, with one fixed seed.

The grid runs in the click handler (Gradio queues it) but is refused while a training job runs:
both would fight over the same cores or GPU. The base is loaded fresh per grid because swapping
networks changes the loaded model.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine.config.sample_limits import SEEDS_PER_CELL
from engine.data.words import trigger_words, without_words
from engine.generate.sampling_defaults import EMBEDDED as EMBEDDED_SAMPLING
from engine.generate.sampling_defaults import for_base
from engine.i18n import EN, Translator, describe_error
from webapp.security import LOCAL, PathNotAllowed, Workspace
from webapp.wizard_logic import output_root

ROOT = Path(__file__).resolve().parent.parent


def make_grid(runner, base: str, files: str, prompts: str, weights: str, seed: float, size: float,
              steps: float, cfg: float, out_dir: str, a_steps: float, a_lr: float, a_slerp: bool,
              a_text: str, a_clip: str, vae: str = "", per_cell: float = 1, control: str = "",
              refs: str = "", progress=None, t: Translator = EN, ws: Workspace = LOCAL):
    """(grid image path, cell image paths, message). Holds the runner while it draws, so
    training cannot start meanwhile (and the grid waits for no training)."""
    from engine.training.jobs import JobBusy

    try:
        with runner.exclusive("grid"):
            return _make_grid(base, files, prompts, weights, seed, size, steps, cfg, out_dir, a_steps,
                              a_lr, a_slerp, a_text, a_clip, vae, per_cell, control, refs, progress, t, ws)
    except JobBusy as err:
        return None, [], t("compare.busy") if err.work == "training" else t("compare.busy_grid")


def _make_grid(base, files, prompts, weights, seed, size, steps, cfg, out_dir, a_steps, a_lr, a_slerp,
               a_text, a_clip, vae, per_cell, control, refs, progress, t: Translator, ws: Workspace):
    from pydantic import ValidationError

    from engine.generate.aesthetic import AestheticSettings
    from engine.generate.grid import GridError, GridJob, parse_weights, run_grid
    from engine.generate.placement import base_for_grid, place, this_machine
    from engine.models.loader import ModelLoadError

    try:
        out = ws.path(out_dir.strip() or output_root() / "grid") / time.strftime("%Y%m%d-%H%M%S")
        paths = [ws.path(line) for line in files.splitlines() if line.strip()]
        vae_file = ws.model(vae) or None
        ref_dir = ws.path(refs.strip()) if refs and refs.strip() else None
        if not paths:
            raise GridError(t("compare.no_files"))
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise GridError(t("compare.missing", path=missing[0]))
        prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not prompt_list:
            raise GridError(t("compare.no_prompt"))
        aesthetic = AestheticSettings(steps=int(a_steps), lr=float(a_lr), slerp=bool(a_slerp),
                                      text=a_text or "", clip=ws.model(a_clip) or None)
        job = GridJob(checkpoints=paths, prompts=prompt_list, weights=parse_weights(weights),
                      seeds=[int(seed)], steps=int(steps), cfg_scale=float(cfg), width=int(size),
                      height=int(size), aesthetic=aesthetic, seeds_per_cell=int(per_cell or 1),
                      control_prompt=control or "", references=ref_dir)
        model, quantize = base_for_grid(ws.model(base) or "embedded", vae_file, paths[0], allow=ws.job)
        drawing = this_machine()
        place(model, drawing, quantize)  # the GPU in half precision where there is one
        tick = (lambda done, total: progress((done, total), desc=t("compare.progress"), unit="cells")
                ) if progress else None
        with drawing.autocast():
            result = run_grid(model, job, out, tick)
        ws.serve(out)
    except (GridError, ModelLoadError, ValidationError, ValueError, OSError) as err:
        return None, [], t("compare.error", error=describe_error(err, t))
    # labelled: which file (epoch) and which weight; the control prompt's cells (the last Z) are
    # in their own grid, not in the gallery, so a gallery index is (file, weight, prompt) only
    cells = [(str(result.cells[key]), f"{result.row_labels[key[0]]} · {result.col_labels[key[1]]}")
             for key in sorted(result.cells) if key[2] < len(prompt_list)]
    message = t("compare.saved", grids=len(result.grids), cells=len(cells), folder=out)
    if result.summary_lines:
        message += "\n" + t("compare.summary") + "\n" + "\n".join(result.summary_lines)
    return str(result.grids[0]), cells, message


def cell_choice(files: str, weights: str, prompts: str, index: float, t: Translator = EN) -> tuple[str, float]:
    """(file, weight) of the gallery's ``index``-th cell; cells are ordered by (row = file,
    column = weight, z = prompt), as make_grid returns them."""
    from engine.generate.grid import parse_weights

    paths = [line.strip() for line in files.splitlines() if line.strip()]
    ws = parse_weights(weights)
    nz = max(len([p for p in prompts.splitlines() if p.strip()]), 1)
    i = int(index)
    if not paths or not 0 <= i < len(paths) * len(ws) * nz:
        raise ValueError(t("compare.not_in_grid"))
    return paths[i // (len(ws) * nz)], ws[(i // nz) % len(ws)]


def keep_pick(file: str, weight: float, name: str, out_dir: str = "", t: Translator = EN,
              ws: Workspace = LOCAL) -> tuple[str, str]:
    """Copy the chosen file as ``<name>`` with its preferred weight recorded; (path, message).
    By default into the run's own folder, beside its job (so the card finds the run's base model
    and settings); a name that is taken there is refused, never overwritten."""
    from engine.data.importer import safe_filename
    from engine.export.pick import pick_checkpoint

    if not file:
        return "", t("compare.click_first")
    try:
        ws.path(file)
    except PathNotAllowed as err:
        return "", t("compare.error", error=describe_error(err, t))
    if not Path(file).is_file():
        return "", t("compare.click_first")
    name = safe_filename(name.strip() or Path(file).stem + "-picked")
    dest = Path(out_dir.strip() or Path(file).parent) / f"{name}{Path(file).suffix}"
    if dest.exists():
        return "", t("compare.name_taken", name=dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = pick_checkpoint(Path(file), dest, float(weight))
    except (OSError, ValueError, RuntimeError) as err:
        return "", t("compare.error", error=describe_error(err, t))
    kept = t("compare.kept", name=Path(file).name, weight=f"{float(weight):g}", path=path)
    return str(path), kept + ("\n" + t("compare.weight_zero") if float(weight) == 0 else "")


def run_choices(parent: Path, t: Translator = EN) -> list[tuple[str, str]]:
    """The runs on disk, newest first, as (label, folder) for a dropdown."""
    from engine.training.runs import list_runs

    return [(t("compare.run_label", folder=r.folder.name, when=time.strftime("%Y-%m-%d %H:%M",
                                                                           time.localtime(r.started)),
               status=t(f"train.status_{r.status}") if r.status != "incomplete" else t("compare.incomplete"),
               n=len(r.files)), str(r.folder))
            for r in list_runs(parent) if r.files]


def files_of_run(folder: str, ws: Workspace = LOCAL) -> dict:
    """What a grid of that run compares, read from the run's folder (so it works after a reload
    or a restart): its files, and its base model and sample settings (prompt, size, steps, CFG)."""
    from engine.config.job import ConfigError, load_config
    from engine.export.card import SampleSettings
    from engine.training.runs import read_run

    run = read_run(ws.path(folder)) if folder else None
    if run is None:
        return {}
    out = {"files": "\n".join(str(p) for p in run.files)}
    try:
        job = load_config(run.job)
    except ConfigError:
        return out
    sample = SampleSettings.from_job(job)
    prompt = (sample.prompts or [job.output.trigger_phrase])[0]
    return {**out, "base": job.model.base, "vae": job.model.vae or "", "prompt": prompt,
            "size": sample.size, "steps": sample.steps, "cfg": sample.cfg_scale,
            "control": without_trigger(prompt, job.output.trigger_phrase), "refs": str(job.dataset.path)}


def without_trigger(prompt: str, trigger: str | None) -> str:
    """The prompt with its trigger words taken out: what the add-on should leave alone (bleed)."""
    words = trigger_words(trigger)
    if not words:
        return ""
    text = without_words(prompt, words)
    return text if text != prompt else ""


def build_compare_tab(t: Translator, ws: Workspace, runner, saved_files=None, view=None):
    """Widgets + events of the compare step; call inside a ``gr.Blocks`` context. Returns the
    picked-file textbox (the export step starts from it)."""
    import gradio as gr

    from webapp.wizard_logic import runs_root

    gr.Markdown(t("compare.title"))
    with gr.Row():
        run_list = gr.Dropdown(run_choices(runs_root(), t), label=t("compare.runs"), elem_id="grid-runs",
                               allow_custom_value=True)
        use = gr.Button(t("compare.use_run"), elem_id="use-run-files")
    with gr.Row():
        base = gr.Textbox("embedded", label=t("compare.base"), elem_id="grid-base")
        vae = gr.Textbox("", label=t("compare.vae"), elem_id="grid-vae")
        out_dir = gr.Textbox(str(output_root() / "grid"), label=t("compare.out"), elem_id="grid-out")
    files = gr.Textbox(lines=4, label=t("compare.files"), elem_id="grid-files")
    prompts = gr.Textbox("zkz, a star on a white background", lines=2,
                         label=t("compare.prompts"), elem_id="grid-prompts")
    with gr.Row():
        weights = gr.Textbox("0, 0.5, 1", label=t("compare.weights"), elem_id="grid-weights")
        seed = gr.Number(42, label=t("compare.seed"), precision=0)
        usual = EMBEDDED_SAMPLING  # the base box starts at the embedded model
        size = gr.Number(usual.size, label=t("compare.size"), precision=0)
        steps = gr.Number(usual.steps, label=t("compare.steps"), precision=0)
        cfg = gr.Number(usual.cfg_scale, label=t("compare.cfg"))
        per_cell = gr.Number(usual.seeds_per_cell, label=t("compare.per_cell"), precision=0,
                             minimum=SEEDS_PER_CELL[0], maximum=SEEDS_PER_CELL[1], elem_id="grid-per-cell")
    with gr.Row():
        control = gr.Textbox("", label=t("compare.control"), elem_id="grid-control")
        refs = gr.Textbox("", label=t("compare.refs"), elem_id="grid-refs")
    with gr.Accordion(t("compare.aesthetic"), open=False):
        gr.Markdown(t("compare.aesthetic_help"))
        with gr.Row():
            a_steps = gr.Number(5, label=t("compare.a_steps"), precision=0)
            a_lr = gr.Number(1e-4, label=t("compare.a_lr"))
            a_slerp = gr.Checkbox(False, label=t("compare.a_slerp"))
        a_text = gr.Textbox("", label=t("compare.a_text"))
        a_clip = gr.Textbox("", label=t("compare.a_clip"))
    go = gr.Button(t("compare.make"), variant="primary", elem_id="make-grid")
    message = gr.Textbox(label=t("compare.message"), interactive=False, elem_id="grid-message")
    grid = gr.Image(label=t("compare.grid"), type="filepath", interactive=False, elem_id="grid-image")
    cells = gr.Gallery(label=t("compare.cells"), columns=6, elem_id="grid-cells")

    def run(b, f, p, w, s, sz, st, c, o, ast, alr, asl, at, ac, v, pc, ctl, rf, progress=gr.Progress()):
        return make_grid(runner, b, f, p, w, s, sz, st, c, o, ast, alr, asl, at, ac, v, pc, ctl, rf, progress, t, ws)

    def listed(job, chosen):
        """The runs on disk (newest first): the one the user chose stays chosen, else the newest."""
        parent = Path((job or {}).get("output", {}).get("dir") or runs_root())
        try:
            ws.path(parent)
        except PathNotAllowed:
            return gr.Dropdown(choices=[], value=None)
        choices = run_choices(parent, t)
        keep = chosen if chosen in [c[1] for c in choices] else (choices[0][1] if choices else None)
        return gr.Dropdown(choices=choices, value=keep)

    filled = [files, base, vae, prompts, size, steps, cfg, control, refs]
    keys = ("files", "base", "vae", "prompt", "size", "steps", "cfg", "control", "refs")

    def use_run(folder):
        try:
            run = files_of_run(folder or "", ws)
        except PathNotAllowed as err:
            return *(gr.skip() for _ in filled), t("compare.error", error=describe_error(err, t))
        if not run.get("files"):
            return *(gr.skip() for _ in filled), t("compare.no_run")
        return (*(gr.skip() if run.get(k) in (None, "") and k not in ("vae", "control") else run.get(k, "")
                  for k in keys),
                t("compare.run_files", n=len(run["files"].splitlines())))

    def base_defaults(name):
        """A base typed in: size, steps and CFG become what that base draws best with."""
        try:
            usual = for_base(ws.model(name) or "embedded")
        except PathNotAllowed:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return usual.size, usual.steps, usual.cfg_scale, usual.seeds_per_cell

    base.input(base_defaults, base, [size, steps, cfg, per_cell], api_name="base_defaults")
    go.click(run, [base, files, prompts, weights, seed, size, steps, cfg, out_dir, a_steps, a_lr, a_slerp,
                   a_text, a_clip, vae, per_cell, control, refs], [grid, cells, message], api_name="make_grid")
    state = view.state if view is not None else gr.State({})
    chosen = gr.State(None)  # a run the user picked from the list (else the newest is used)
    run_list.input(lambda v: v, run_list, chosen, api_visibility="private")
    run_list.focus(listed, [state, chosen], run_list, api_visibility="private")  # new runs appear
    use.click(listed, [state, chosen], run_list, api_visibility="private").then(
        use_run, run_list, [*filled, message], api_name="use_run_files")
    with gr.Row():
        cell = gr.Number(0, label=t("compare.cell"), precision=0, elem_id="cell-index")
        pick_file = gr.Textbox(label=t("compare.pick_file"), interactive=False, elem_id="pick-file")
        pick_weight = gr.Number(1.0, label=t("compare.pick_weight"), elem_id="pick-weight")
    with gr.Row():
        pick_name = gr.Textbox("", label=t("compare.pick_name"), elem_id="pick-name")
        keep = gr.Button(t("compare.keep"), variant="primary", elem_id="keep-pick")
    picked = gr.Textbox(label=t("compare.kept_file"), interactive=False, elem_id="picked")
    pick_msg = gr.Textbox(label=t("compare.pick_message"), interactive=False, elem_id="pick-message")

    def choose(f, w, p, i):
        try:
            file, weight = cell_choice(f, w, p, i, t)
        except ValueError as err:
            return gr.skip(), gr.skip(), t("compare.error", error=describe_error(err, t))
        return file, weight, t("compare.chosen", name=Path(file).name, weight=f"{weight:g}")

    def on_select(f, w, p, evt):
        return (evt.index,) + tuple(choose(f, w, p, evt.index))
    # Gradio finds the event-data argument by its annotation (a real class, not a string)
    on_select.__annotations__["evt"] = gr.SelectData

    cells.select(on_select, [files, weights, prompts], [cell, pick_file, pick_weight, pick_msg],
                 api_visibility="private")
    gr.Button("Choose cell", visible=False).click(
        choose, [files, weights, prompts, cell], [pick_file, pick_weight, pick_msg], api_name="choose_cell")
    keep.click(lambda f, w, n: keep_pick(f, w, n, "", t, ws),
               [pick_file, pick_weight, pick_name], [picked, pick_msg], api_name="keep_pick")
    return picked
