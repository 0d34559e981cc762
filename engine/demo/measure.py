"""Simple, explainable measurements of shapes images: what colour is the shape, what shape is it,
how much of the image is the demo concept's purple. They make the embedded model's quality test
(and the demo LoRA's) a number instead of an opinion."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.demo.shapes import BACKGROUNDS, COLOURS, DEMO_COLOUR


def _rgb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def background_colour(im: Image.Image) -> np.ndarray:
    """The median of the border pixels (shapes never touch all four borders)."""
    a = _rgb(im)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.median(border, axis=0)


def foreground_mask(im: Image.Image, threshold: float = 60.0) -> np.ndarray:
    a = _rgb(im)
    return np.linalg.norm(a - background_colour(im), axis=-1) > threshold


def dominant_colour(im: Image.Image) -> str | None:
    """Name of the palette colour nearest to the foreground's median colour (None: no shape)."""
    mask = foreground_mask(im)
    if mask.sum() < 20:
        return None
    median = np.median(_rgb(im)[mask], axis=0)
    return min(COLOURS, key=lambda c: np.linalg.norm(median - np.array(COLOURS[c])))


def background_name(im: Image.Image) -> str:
    bg = background_colour(im)
    return min(BACKGROUNDS, key=lambda c: np.linalg.norm(bg - np.array(BACKGROUNDS[c])))


def fill_ratio(im: Image.Image) -> float | None:
    """Foreground pixels / bounding-box area: square ~1.0, circle ~0.79, triangle ~0.5, star ~0.4."""
    mask = foreground_mask(im)
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(mask.sum() / box)


def shape_class(im: Image.Image) -> str | None:
    """Coarse shape from the fill ratio: 'square', 'circle' or 'pointy' (triangle or star)."""
    r = fill_ratio(im)
    if r is None:
        return None
    if r >= 0.88:
        return "square"
    if r >= 0.66:
        return "circle"
    return "pointy"


def purple_fraction(im: Image.Image, tolerance: float = 70.0) -> float:
    """Share of pixels close to the demo concept's purple."""
    a = _rgb(im)
    return float((np.linalg.norm(a - np.array(DEMO_COLOUR), axis=-1) < tolerance).mean())
