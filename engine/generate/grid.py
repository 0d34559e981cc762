"""The XYZ comparison grid: saved checkpoints (rows) x LoRA/LyCORIS weights, hypernetwork /
embedding strengths or aesthetic weights (columns) x prompts or seeds (one grid per Z value),
to pick the best epoch and weight. A cell can hold several seeds (a tile), since one seed is too
noisy to choose by; with the training images and a prompt without the trigger, each row also
gets a likeness and a bleed figure (grid_summary) and the best row is marked.

The base model is loaded once; each checkpoint is swapped in place (NetworkSwapper) and the Z cells
of one (checkpoint, weight) pair are generated in batches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open

from engine.generate.aesthetic import AestheticSettings
from engine.generate.grid_summary import (
    GridSummary,
    References,
    bleed,
    file_validation_loss,
    likeness,
    load_references,
)
from engine.generate.prompts import a1111_parameters, save_png_with_parameters
from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
from engine.generate.swappers import NetworkSwapper
from engine.i18n import Explained
from engine.models.loader import LoadedModel

DEFAULT_WEIGHTS = (0.0, 0.4, 0.6, 0.8, 1.0)
BATCH = 8  # images per pipeline call: bounds memory at 1024 px
_RANGE = re.compile(r"^\s*(-?[\d.]+)\s*-\s*(-?[\d.]+)\s*\(\s*\+\s*([\d.]+)\s*\)\s*$")


class GridError(Explained, ValueError):
    pass


def parse_weights(text: str) -> list[float]:
    """'0, 0.5, 1' or A1111's range syntax '0.4-1.0(+0.2)' -> [0.4, 0.6, 0.8, 1.0]."""
    m = _RANGE.match(text)
    if m:
        start, stop, step = (float(g) for g in m.groups())
        if step <= 0 or stop < start:
            raise GridError(f"bad weight range {text!r}: need start <= stop and a positive step",
                            "grid_range", text=text)
        n = int(round((stop - start) / step))
        return [round(start + i * step, 6) for i in range(n + 1) if start + i * step <= stop + 1e-9]
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise GridError(f"weights must be numbers like '0, 0.5, 1' or a range like '0.4-1.0(+0.2)' "
                        f"(got {text!r})", "grid_weights", text=text) from None
    if not values:
        raise GridError("no weights given", "grid_no_weights")
    return values


def checkpoint_label(path: Path) -> str:
    """'epoch 3' from the file's ss_epoch, or from our ``name-000003`` file names (hypernetwork
    .pt files carry no metadata); otherwise the file name."""
    epoch = None
    try:
        with safe_open(str(path), "pt") as f:
            epoch = (f.metadata() or {}).get("ss_epoch")
    except Exception:
        m = re.search(r"-(\d{6})$", Path(path).stem)
        epoch = str(int(m.group(1))) if m else None
    return f"epoch {epoch}" if epoch else Path(path).stem


def safe_name(text: str, limit: int = 60) -> str:
    cleaned = re.sub(r"[^\w.-]+", "_", text, flags=re.UNICODE).strip("._")
    return (cleaned or "x")[:limit]


@dataclass
class GridJob:
    checkpoints: list[Path]
    prompts: list[str]
    weights: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHTS))
    seeds: list[int] = field(default_factory=lambda: [42])
    z_axis: str = "prompt"  # "prompt": one grid per prompt (seed = seeds[0]); "seed": one per seed
    negative: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "euler_a"
    aesthetic: AestheticSettings | None = None  # how aesthetic embeddings are applied
    local_files_only: bool = False  # e.g. the CLIP an aesthetic embedding needs
    seeds_per_cell: int = 1  # a cell tiles this many images, seeds seed .. seed + n - 1
    control_prompt: str = ""  # a prompt without the trigger: its own grid, and the bleed figures
    references: Path | None = None  # the training images: the likeness figures

    def __post_init__(self) -> None:
        """The same ranges as a sample image of a job (engine.config.sample_limits): a size of 0 or a
        NaN scale is refused here, not as a tensor error halfway through the grid."""
        import math

        from engine.config.sample_limits import SAMPLE_LIMITS, SEEDS_PER_CELL

        values = {"width": [self.width], "height": [self.height], "steps": [self.steps],
                  "cfg_scale": [self.cfg_scale], "seed": self.seeds, "seeds_per_cell": [self.seeds_per_cell]}
        limits = {**SAMPLE_LIMITS, "seeds_per_cell": SEEDS_PER_CELL}
        for name, got in values.items():
            low, high = limits[name]
            bad = [v for v in got if not (math.isfinite(v) and low <= v <= high)]
            if bad:
                raise GridError(f"{name} must be between {low} and {high} (got {bad[0]})", "grid_range",
                                name=name, low=low, high=high, value=bad[0])
        if self.width % 8 or self.height % 8:
            raise GridError(f"the image size must be a multiple of 8 (got {self.width}x{self.height})",
                            "grid_size_multiple", width=self.width, height=self.height)


@dataclass
class GridResult:
    grids: list[Path]
    cells: dict[tuple[int, int, int], Path]  # (row, column, z) -> image
    row_labels: list[str]
    col_labels: list[str]
    z_labels: list[str]
    summary: GridSummary | None = None
    summary_lines: list[str] = field(default_factory=list)  # per row, at the summary's column
    summary_csv: Path | None = None


def _z_values(job: GridJob) -> list[tuple[str, int, str]]:
    """[(prompt, seed, label)] for each Z; the control prompt (if any) is the last."""
    if job.z_axis == "seed":
        zs = [(job.prompts[0], s, f"seed {s}") for s in job.seeds]
    else:
        zs = [(p, job.seeds[0], p) for p in job.prompts]
    if job.control_prompt.strip():
        zs.append((job.control_prompt.strip(), job.seeds[0], f"without trigger: {job.control_prompt.strip()}"))
    return zs


def tile(images: list[Image.Image]) -> Image.Image:
    """Several seeds as one cell: a near-square block of the images, in seed order."""
    if len(images) == 1:
        return images[0]
    cols = int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    return sheet


def _generate(pipe, specs: list[SampleSpec], encode) -> list[Image.Image]:
    out: list[Image.Image] = []
    for i in range(0, len(specs), BATCH):
        out += generate_batch(pipe, specs[i:i + BATCH], encode=encode)
    return out


def _summary_column(weights: list[float]) -> int:
    """The column the best row is chosen at: weight 1 if the grid has it, else the largest."""
    return weights.index(1.0) if 1.0 in weights else max(range(len(weights)), key=lambda c: weights[c])


def run_grid(model: LoadedModel, job: GridJob, out_dir: Path,
             progress: Callable[[int, int], None] | None = None) -> GridResult:
    if not job.checkpoints:
        raise GridError("no checkpoints to compare", "grid_no_files")
    swapper = NetworkSwapper(model, aesthetic=job.aesthetic, local_files_only=job.local_files_only)
    pipe = build_pipeline(model, scheduler=job.sampler)
    zs = _z_values(job)
    n = job.seeds_per_cell
    control = len(zs) - 1 if job.control_prompt.strip() else None
    refs: References | None = load_references(job.references) if job.references else None
    if job.references and refs is None:  # a likeness column nobody asked to lose: say so
        raise GridError(f"no images in the training images folder {job.references}", "grid_no_references",
                        folder=job.references)
    out_dir = Path(out_dir)
    cells: dict[tuple[int, int, int], Path] = {}
    images: dict[tuple[int, int, int], Image.Image] = {}
    seen: dict[tuple[int, int, int], list[Image.Image]] = {}
    specs = [SampleSpec(prompt, job.negative, seed + k, job.steps, job.cfg_scale, job.width, job.height)
             for prompt, seed, _ in zs for k in range(n)]
    measured = refs is not None or control is not None
    base_images: list[Image.Image] = []  # the base's own images (weight 0): what the figures compare with
    total, done = len(job.checkpoints) * len(job.weights), 0
    for r, ckpt in enumerate(job.checkpoints):
        swapper.load(Path(ckpt))
        if measured and not base_images:
            swapper.set_weight(0.0)
            base_images = _generate(pipe, specs, swapper.encode)
        for c, weight in enumerate(job.weights):
            swapper.set_weight(weight)
            # (weight 0 of the first file is exactly those images; a later file's strength 0 need
            # not be, e.g. an embedding scaled to 0, so it is drawn again)
            reuse = measured and weight == 0.0 and r == 0
            batch = base_images if reuse else _generate(pipe, specs, swapper.encode)
            for z in range(len(zs)):
                spec, ims = specs[z * n], batch[z * n:(z + 1) * n]
                text = a1111_parameters(spec, job.sampler, model_name=model.name)
                text += "\n" + swapper.prompt_tag(Path(ckpt).stem, weight)
                if n > 1:
                    text += f"\nCell seeds: {spec.seed}-{spec.seed + n - 1}"
                name = f"r{r:02d}_c{c:02d}_z{z:02d}_{safe_name(Path(ckpt).stem)}_w{weight:g}.png"
                images[(r, c, z)] = tile(ims)
                cells[(r, c, z)] = save_png_with_parameters(images[(r, c, z)], out_dir / "cells" / name, text)
                if measured:
                    seen[(r, c, z)] = ims
            done += 1
            if progress:
                progress(done, total)
    rows = [checkpoint_label(Path(p)) for p in job.checkpoints]
    cols = [f"{swapper.axis_name} {w:g}" for w in job.weights]
    summary, lines, csv_path = None, [], None
    sheet_rows = rows  # the sheet's row labels: with the figures under each, when measured
    validation = {r: v for r, p in enumerate(job.checkpoints) if (v := file_validation_loss(Path(p))) is not None}
    if measured or validation:
        base_of = {z: base_images[z * n:(z + 1) * n] for z in range(len(zs))}
        summary = _summarise(seen, rows, cols, len(zs), control, refs, base_of)
        summary.validation = validation
        column = _summary_column(job.weights)
        lines = summary.lines(column)
        csv_path = summary.write_csv(out_dir / "summary.csv")
        best = summary.best_row(column)
        rows = [f"{label} *" if r == best else label for r, label in enumerate(rows)]
        sheet_rows = [f"{label}\n{summary.short(r, column)}" for r, label in enumerate(rows)]
    grids = []
    for z, (_, _, zlabel) in enumerate(zs):
        sheet = compose_grid([[images[(r, c, z)] for c in range(len(cols))] for r in range(len(rows))],
                             sheet_rows, cols, title=zlabel)
        path = out_dir / f"grid_{z:02d}_{safe_name(zlabel)}.png"
        grids.append(save_png_with_parameters(sheet, path, f"XYZ grid: {zlabel}"))
    return GridResult(grids, cells, rows, cols, [z[2] for z in zs], summary, lines, csv_path)


def _summarise(seen, rows, cols, nz, control, refs, base_of) -> GridSummary:
    like, bl = {}, {}
    prompt_zs = [z for z in range(nz) if z != control]
    for r in range(len(rows)):
        for c in range(len(cols)):
            if refs is not None and prompt_zs:
                like[(r, c)] = likeness([im for z in prompt_zs for im in seen[(r, c, z)]],
                                        [im for z in prompt_zs for im in base_of[z]], refs)
            if control is not None:
                bl[(r, c)] = bleed(seen[(r, c, control)], base_of[control])
    return GridSummary(list(rows), cols, like, bl)


def compose_grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str],
                 title: str = "") -> Image.Image:
    """Paste cells into a sheet with a title line, column labels on top and row labels left."""
    font = ImageFont.load_default()
    w, h = cells[0][0].size
    left = max(70, 7 * max(len(line) for s in row_labels for line in s.split("\n")))
    top, title_h = 22, 18 if title else 0
    sheet = Image.new("RGB", (left + w * len(col_labels), title_h + top + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title[:120], fill="black", font=font)
    for c, label in enumerate(col_labels):
        draw.text((left + c * w + 4, title_h + 5), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((4, title_h + top + r * h + h // 2 - 6), label, fill="black", font=font)
        for c, im in enumerate(cells[r]):
            sheet.paste(im, (left + c * w, title_h + top + r * h))
    return sheet
