"""Numbers beside the grid, so the best epoch stands out instead of being guessed from one seed.

Two measures, both model-free (no image encoder is needed, so they work offline on any base),
both relative to the base model's own images of the same prompt and seeds (weight 0):

- **likeness** (%): how much closer a cell's images come to the nearest training image than the
  base's images do, compared as 16x16 thumbnails (colour and layout). 0 = no closer than the base,
  100 = a training image itself, negative = farther. It sees colour, shape and composition, not
  identity: read it as "is it drawing my images' look", not "is it my character". (A plain
  similarity score was tried first: on the demo the white background made every cell ~90.)
- **bleed** (0-100): how much the add-on changes a prompt *without* its trigger, as the mean
  pixel change from the base's image (0 = untouched). A LoRA that overrides everything has high
  bleed even when its likeness is good.

The best row is the one with the highest likeness minus bleed at the summary's column, so an
epoch that learned the look without taking over other prompts wins.

A third figure needs no images at all: the **validation loss** each file's metadata carries when
its job measured one (engine/training/validation.py), the row with the lowest marked.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

THUMB = 16


def _thumb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32) / 255.0


@dataclass
class References:
    """The training images, reduced to what likeness compares."""
    thumbs: np.ndarray  # (n, 16, 16, 3)

    @classmethod
    def of(cls, images: list[Image.Image]) -> "References":
        if not images:
            raise ValueError("no reference images")
        return cls(np.stack([_thumb(im) for im in images]))

    def distance(self, im: Image.Image) -> float:
        """Mean absolute thumbnail difference to the nearest training image (0-1)."""
        return float(np.abs(self.thumbs - _thumb(im)[None]).mean(axis=(1, 2, 3)).min())


def load_references(folder: Path, limit: int = 64) -> References | None:
    """The first ``limit`` images of a dataset folder (any depth), or None if it has none."""
    from engine.data.folder import images_under

    paths = images_under(Path(folder))[:limit]
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except OSError:
            continue  # a damaged file is the dataset check's business, not the grid's
    return References.of(images) if images else None


def likeness(images: list[Image.Image], base_images: list[Image.Image], refs: References) -> float:
    """How much closer ``images`` are to the training images than the base's images of the same
    prompts and seeds, in % of the base's distance."""
    ours = np.mean([refs.distance(im) for im in images])
    theirs = np.mean([refs.distance(im) for im in base_images])
    return 100.0 * float(1.0 - ours / theirs) if theirs > 0 else 0.0


def bleed(images: list[Image.Image], untouched: list[Image.Image]) -> float:
    """Mean absolute pixel change from the weight-0 images of the same seeds, in % of full scale."""
    diffs = [np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean()
             for a, b in zip(images, untouched)]
    return 100.0 * float(np.mean(diffs)) / 255.0


@dataclass
class GridSummary:
    """Per (row, column): likeness and bleed (None where not measured), and the best row."""
    row_labels: list[str]
    col_labels: list[str]
    likeness: dict[tuple[int, int], float]
    bleed: dict[tuple[int, int], float]
    validation: dict[int, float] = field(default_factory=dict)  # per row: the file's validation loss

    def lowest_validation_row(self) -> int | None:
        return min(self.validation, key=self.validation.__getitem__) if self.validation else None

    def best_row(self, column: int) -> int | None:
        rows = [r for r in range(len(self.row_labels)) if (r, column) in self.likeness]
        if not rows:
            return None
        return max(rows, key=lambda r: self.likeness[(r, column)] - self.bleed.get((r, column), 0.0))

    def _figures(self, r: int, column: int) -> list[tuple[str, float]]:
        return [(name, got[(r, column)]) for name, got in (("likeness", self.likeness), ("bleed", self.bleed))
                if (r, column) in got]

    def lines(self, column: int) -> list[str]:
        """One plain line per row for the page and the terminal."""
        best, lowest = self.best_row(column), self.lowest_validation_row()
        return [", ".join([label] + [f"{name} {value:.1f}" for name, value in self._figures(r, column)]
                          + ([f"validation loss {self.validation[r]:.4f}"] if r in self.validation else []))
                + ("  <- best" if r == best else "") + ("  <- lowest validation loss" if r == lowest else "")
                for r, label in enumerate(self.row_labels)]

    def short(self, r: int, column: int) -> str:
        """Row ``r``'s figures in a few characters, for under its label in the grid sheet."""
        figures = [f"{'like' if name == 'likeness' else name} {value:.0f}" for name, value in self._figures(r, column)]
        if r in self.validation:
            figures.append(f"val {self.validation[r]:.3f}" + ("*" if r == self.lowest_validation_row() else ""))
        return " ".join(figures)

    def write_csv(self, path: Path) -> Path:
        from engine.fileio import atomic_write

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["file", "column", "likeness", "bleed", "validation_loss"])
                for r, row in enumerate(self.row_labels):
                    val = self.validation.get(r)
                    for c, col in enumerate(self.col_labels):
                        like, bl = self.likeness.get((r, c)), self.bleed.get((r, c))
                        w.writerow([row, col, "" if like is None else f"{like:.2f}",
                                    "" if bl is None else f"{bl:.2f}", "" if val is None else f"{val:.6f}"])

        atomic_write(path, write)
        return path


def file_validation_loss(path: Path) -> float | None:
    """The validation loss a file's metadata records (engine.export.metadata), if any. Only
    .safetensors files have metadata (a .pt would be read whole, only to find none)."""
    from engine.export.file_kind import read_kind
    from engine.export.metadata import VALIDATION_LOSS_KEY

    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        return float(read_kind(Path(path)).meta[VALIDATION_LOSS_KEY])
    except (KeyError, ValueError, TypeError):
        return None
