"""Make a training-ready working copy of a dataset: resized/cropped to multiples of 64 (centre,
focal point, or per-image aspect bucket), optional mirrored copies, oversized images split.

Why a copy: the originals stay untouched (a user's data is never lost) and the copy is what
the user sees and can fix before training. Captions travel with their images (tiles and flips
inherit the caption of their source).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageOps

from engine.data.buckets import STEP, assign_buckets
from engine.data.folder import DatasetIndex, ImageItem
from engine.data.images import load_rgb, resize_center_crop
from engine.data.validate import check_image

CropMode = Literal["center", "focal", "bucket"]


@dataclass
class PreprocessOptions:
    resolution: int = 512
    crop: CropMode = "center"        # bucket: keep the aspect, snap to the nearest bucket
    flip_copies: bool = False        # also write a mirrored copy of each image
    split_oversized: bool = False    # cut very long images into overlapping tiles
    split_threshold: float = 0.5     # short/long side below this counts as oversized
    split_overlap: float = 0.2       # minimum overlap between neighbouring tiles
    min_bucket: int = 256
    max_bucket: int = 1024
    no_upscale: bool = False
    background: tuple[int, int, int] = (255, 255, 255)  # for transparent images


@dataclass
class PreprocessReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    sources: int = 0

    @property
    def images_per_second(self) -> float:
        return self.sources / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{self.sources} source images -> {len(self.written)} training images in "
                f"{self.seconds:.1f}s ({self.images_per_second:.1f} images/s); {len(self.skipped)} skipped")


def focal_point(im: Image.Image) -> tuple[float, float]:
    """Where the interesting part is, as (x, y) in pixels: the centroid of edge energy and colour
    saturation on a small copy (flat backgrounds carry neither), pulled slightly to the centre."""
    small = im.convert("RGB").resize((64, max(1, round(64 * im.height / im.width))), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.float32) / 255.0
    gray = arr.mean(axis=2)
    gy, gx = np.gradient(gray)
    energy = np.hypot(gx, gy) + 0.5 * (arr.max(axis=2) - arr.min(axis=2))
    energy = energy ** 2
    total = energy.sum()
    h, w = gray.shape
    if total <= 1e-8:
        return im.width / 2, im.height / 2
    ys, xs = np.mgrid[0:h, 0:w]
    fx, fy = (xs * energy).sum() / total / w, (ys * energy).sum() / total / h
    fx, fy = 0.85 * fx + 0.15 * 0.5, 0.85 * fy + 0.15 * 0.5
    return fx * im.width, fy * im.height


def focal_crop(im: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width``x``height`` and crop the window centred on the focal point
    (clamped inside the image), instead of blindly cutting the middle."""
    scale = max(width / im.width, height / im.height)
    im = im.resize((max(width, round(im.width * scale)), max(height, round(im.height * scale))),
                   Image.Resampling.LANCZOS)
    fx, fy = focal_point(im)
    left = int(min(max(0, fx - width / 2), im.width - width))
    top = int(min(max(0, fy - height / 2), im.height - height))
    return im.crop((left, top, left + width, top + height))


def split_tiles(im: Image.Image, threshold: float, overlap: float) -> list[Image.Image]:
    """Tiles of a very long image (short/long < ``threshold``): squares of the short side,
    spread evenly along the long side so neighbours overlap by at least ``overlap``."""
    long_side, short = max(im.size), min(im.size)
    if short / long_side >= threshold:
        return [im]
    stride_max = short * (1 - overlap)
    n = max(2, math.ceil((long_side - short) / stride_max) + 1)
    stride = (long_side - short) / (n - 1)
    tiles = []
    for k in range(n):
        off = round(k * stride)
        box = (off, 0, off + short, short) if im.width >= im.height else (0, off, short, off + short)
        tiles.append(im.crop(box))
    return tiles


def _fit(im: Image.Image, opts: PreprocessOptions) -> Image.Image:
    r = opts.resolution
    if opts.crop == "center":
        return resize_center_crop(im, r, r)
    if opts.crop == "focal":
        return focal_crop(im, r, r)
    w, h = assign_buckets({"x": im.size}, r, opts.min_bucket, opts.max_bucket, opts.no_upscale).buckets["x"]
    return resize_center_crop(im, w, h)


def _unused(folder: Path, stem: str, taken: set[Path]) -> Path:
    """``folder/stem.png``, or ``stem_2.png``, ... when this run already wrote that name
    (case-insensitively, for Windows and macOS)."""
    path, k = folder / f"{stem}.png", 1
    while Path(str(path).lower()) in taken:
        k += 1
        path = folder / f"{stem}_{k}.png"
    taken.add(Path(str(path).lower()))
    return path


def preprocess_items(items: list[ImageItem], dest: Path, opts: PreprocessOptions,
                     progress: Callable[[int, int], None] | None = None,
                     layout: Callable[[ImageItem], Path] | None = None) -> PreprocessReport:
    """Write the working copy of ``items`` under ``dest`` (PNG, caption beside each). Unusable
    files are reported and skipped. ``layout`` maps an item to its sub-folder (default: keep
    the item's subset folder, so repeats survive)."""
    report = PreprocessReport(sources=len(items))
    taken: set[Path] = set()  # names written in this run: a.jpg and a.png must not both be a.png
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        check = check_image(item.path, opts.resolution)
        if not check.ok:
            report.skipped.append((item.path, "; ".join(check.errors)))
        else:
            folder = Path(dest) / (layout(item) if layout else Path(item.subset))
            folder.mkdir(parents=True, exist_ok=True)
            im = load_rgb(item.path, opts.background)
            tiles = split_tiles(im, opts.split_threshold, opts.split_overlap) if opts.split_oversized else [im]
            for t, tile in enumerate(tiles):
                out = _fit(tile, opts)
                stem = item.path.stem + (f"_tile{t}" if len(tiles) > 1 else "")
                variants = [(stem, out)] + ([(stem + "_flip", ImageOps.mirror(out))] if opts.flip_copies else [])
                for name, variant in variants:
                    path = _unused(folder, name, taken)
                    variant.save(path)
                    path.with_suffix(".txt").write_text(item.caption, encoding="utf-8")
                    report.written.append(path)
        if progress:
            progress(k + 1, len(items))
    report.seconds = time.perf_counter() - t0
    return report


def preprocess_dataset(index: DatasetIndex, dest: Path, opts: PreprocessOptions,
                       progress: Callable[[int, int], None] | None = None) -> PreprocessReport:
    """Every subset of ``index`` into ``dest/<subset folder>/`` (multiples of {STEP})."""
    return preprocess_items(index.items, dest, opts, progress)


__all__ = ["PreprocessOptions", "PreprocessReport", "focal_point", "focal_crop", "split_tiles",
           "preprocess_items", "preprocess_dataset", "STEP"]
