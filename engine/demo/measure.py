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


def foreground_mask(im: Image.Image, threshold: float = 100.0) -> np.ndarray:
    """Pixels far from the background colour (100 ignores the faint halos generated images have
    at shape edges and borders, which would otherwise inflate the bounding box)."""
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


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask: the shape, without stray specks (a VAE
    can leave a dark pixel in an image corner, which would stretch the bounding box to it)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        region, stack = [], [(int(y0), int(x0))]
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _shape_box(im: Image.Image) -> np.ndarray | None:
    """The shape's mask cropped to its bounding box (None: no shape)."""
    mask = largest_component(foreground_mask(im))
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _corner_fill(box: np.ndarray) -> float:
    ch, cw = max(1, round(box.shape[0] / 4)), max(1, round(box.shape[1] / 4))
    return float(np.mean([box[:ch, :cw].mean(), box[:ch, -cw:].mean(),
                          box[-ch:, :cw].mean(), box[-ch:, -cw:].mean()]))


def fill_ratio(im: Image.Image) -> float | None:
    """Shape pixels / bounding-box area: square ~1.0, circle ~0.79, triangle ~0.5, star ~0.4."""
    box = _shape_box(im)
    return None if box is None else float(box.mean())


def corner_fill(im: Image.Image) -> float | None:
    """How much of the shape's bounding-box corners it fills (each corner a quarter of the box's
    width and height): a square fills them (1.0), a circle leaves most of them empty (0.23-0.34
    on the drawn shapes). Sharper than the overall fill for telling a square from a circle: a
    generated square with slightly concave sides fills less of its box but still reaches into
    the corners, and a rounded blob does not."""
    box = _shape_box(im)
    return None if box is None else _corner_fill(box)


def shape_class(im: Image.Image) -> str | None:
    """Coarse shape: 'pointy' (triangle or star: fill below 0.66), else 'square' when it fills its
    box's corners (0.67: halfway between the drawn circles' 0.34 and squares' 1.0), else 'circle'."""
    box = _shape_box(im)
    if box is None:
        return None
    if box.mean() < 0.66:
        return "pointy"
    return "square" if _corner_fill(box) >= 0.67 else "circle"


def is_cross(im: Image.Image) -> bool:
    """A plus-shaped cross (the learning tests' new shape): it fills a good part of its box
    (drawn: 0.62; a star 0.4) but leaves the box's corners empty (drawn: 0; a circle 0.23-0.34,
    a square 1.0) and covers the box's centre."""
    box = _shape_box(im)
    if box is None:
        return False
    h, w = box.shape
    centre = box[h * 3 // 8:h - h * 3 // 8, w * 3 // 8:w - w * 3 // 8].mean()
    return box.mean() >= 0.45 and _corner_fill(box) < 0.12 and centre > 0.9


def mean_hue(im: Image.Image) -> float | None:
    """Circular mean hue (degrees) of the foreground, weighted by saturation."""
    mask = foreground_mask(im)
    if mask.sum() < 20:
        return None
    rgb = _rgb(im)[mask] / 255.0
    mx, mn = rgb.max(1), rgb.min(1)
    delta = np.where(mx - mn == 0, 1e-9, mx - mn)
    r, g, b = rgb.T
    h = np.select([mx == r, mx == g], [((g - b) / delta) % 6, (b - r) / delta + 2], (r - g) / delta + 4)
    return _circular_mean(h * 60, (mx - mn) / np.where(mx == 0, 1, mx))


def _circular_mean(hue_deg: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean of angles (degrees): hue wraps, 350 and 10 average to 0, not 180."""
    ang = np.deg2rad(hue_deg)
    return float(np.rad2deg(np.arctan2((weights * np.sin(ang)).sum(), (weights * np.cos(ang)).sum())) % 360)


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def rgb_hue(rgb: tuple[int, int, int]) -> float:
    from colorsys import rgb_to_hsv

    return rgb_to_hsv(*(v / 255 for v in rgb))[0] * 360


def palette_hue(name: str) -> float:
    return rgb_hue(COLOURS[name])


def _hsv(im: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel hue (degrees), saturation and value (0-1), as PIL's HSV conversion gives them."""
    hsv = np.asarray(im.convert("RGB").convert("HSV"), dtype=np.float32)
    return hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255


def purple_fraction(im: Image.Image, hue_range: tuple[float, float] = (255.0, 320.0),
                    min_saturation: float = 0.2) -> float:
    """Share of pixels with a purple/violet hue (the demo concept's colour is at 281 degrees;
    the nearest palette colours, blue at 228 and pink at 328, fall outside), ignoring grays."""
    hue, sat, val = _hsv(im)
    mask = (hue >= hue_range[0]) & (hue <= hue_range[1]) & (sat >= min_saturation) & (val >= 0.25)
    return float(mask.mean())


def coloured_hue(images: list[Image.Image], min_saturation: float = 0.2) -> float | None:
    """Circular mean hue (degrees) of the coloured pixels of several images together (saturation
    and brightness at least 0.2 / 0.25, weighted by saturation; white, gray and black count for
    nothing). Unlike a share of pixels in a hue range it moves smoothly as a colour blends into
    another, so it can say whether a LoRA at half weight lies between its ends."""
    hue, sat, val = (np.concatenate([c.ravel() for c in channel]) for channel in zip(*map(_hsv, images)))
    keep = (sat >= min_saturation) & (val >= 0.25)
    return _circular_mean(hue[keep], sat[keep]) if keep.any() else None


def demo_hue() -> float:
    """The demo concept's purple as a hue (281 degrees)."""
    return rgb_hue(DEMO_COLOUR)
