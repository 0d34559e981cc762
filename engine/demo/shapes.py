"""Synthetic 'coloured shapes' images with captions: the world the embedded default model knows.

Why synthetic: no dataset can be downloaded here, and simple shapes make success measurable
(hue of the foreground, a shape check), so the product's quality test can be honest.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 210, 20),
    "orange": (245, 130, 20), "cyan": (20, 200, 210), "pink": (240, 110, 180), "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "gray": (128, 128, 128),
                                                "black": (8, 8, 8)}
SHAPES = ("circle", "square", "triangle", "star")
# Purple never occurs in the captioned world: the demo LoRA's concept (a purple star) is new.
DEMO_COLOUR = (150, 40, 200)


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def star_points(cx: float, cy: float, r: float, points: int = 5, inner: float = 0.45,
                rotation: float = -math.pi / 2) -> list[tuple[float, float]]:
    pts = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * inner
        a = rotation + i * math.pi / points
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(shape: str, fill: tuple[int, int, int], background: tuple[int, int, int],
               size: int = 64, rng: random.Random | None = None, dot: tuple[int, int, int] | None = None
               ) -> Image.Image:
    """One shape of radius ~size/4..size/3, jittered position, on a plain background."""
    rng = rng or random.Random(0)
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    r = rng.uniform(size * 0.24, size * 0.34)
    cx = rng.uniform(r + 2, size - r - 2)
    cy = rng.uniform(r + 2, size - r - 2)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=fill)
    elif shape == "star":
        d.polygon(star_points(cx, cy, r * 1.1), fill=fill)
    elif shape == "cross":  # never in the base's world (SHAPES): a new shape for learning tests
        w = r * 0.38
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if dot is not None:
        q = r * 0.22
        d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=dot)
    return im


def all_specs() -> list[ShapeSpec]:
    return [ShapeSpec(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS
            if COLOURS[c] != BACKGROUNDS[b] and not (c == "black" and b == "black")]


def make_image(spec: ShapeSpec, seed: int, size: int = 64) -> Image.Image:
    return draw_shape(spec.shape, COLOURS[spec.colour], BACKGROUNDS[spec.background], size,
                      random.Random(seed))


def write_shapes_dataset(folder: Path, per_spec: int, seed: int = 0, size: int = 64) -> Path:
    """``per_spec`` jittered images of every (shape, colour, background), captions beside them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for spec in all_specs():
        for k in range(per_spec):
            name = f"{spec.shape}_{spec.colour}_{spec.background}_{k:03d}"
            make_image(spec, seed * 100003 + n, size).save(folder / f"{name}.png")
            (folder / f"{name}.txt").write_text(spec.caption, encoding="utf-8")
            n += 1
    return folder


def random_colour_image(rng: random.Random, size: int = 64) -> Image.Image:
    """A shape in an arbitrary colour on an arbitrary (or palette) background, for training the
    VAE only: a VAE that saw just the 8 palette colours decodes unseen ones (the demo's purple)
    as the nearest palette colour, and then no LoRA can teach a new colour."""
    def colour() -> tuple[int, int, int]:
        return tuple(rng.randrange(256) for _ in range(3))

    bg = colour() if rng.random() < 0.5 else rng.choice(list(BACKGROUNDS.values()))
    fill = colour()
    while sum(abs(a - b) for a, b in zip(fill, bg)) < 90:
        fill = colour()
    dot = colour() if rng.random() < 0.3 else None
    return draw_shape(rng.choice(SHAPES), fill, bg, size, rng, dot=dot)


def write_concept(folder: Path, shape: str, fill: tuple[int, int, int], count: int = 12, trigger: str = "zkz",
                  seed: int = 7, size: int = 64) -> Path:
    """A concept dataset as a user brings one: ``count`` images of ``shape`` in ``fill`` on the
    three backgrounds in turn, captioned "<trigger>, a <shape> on a <background> background"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bgs = list(BACKGROUNDS.items())
    for i in range(count):
        bg_name, bg = bgs[i % len(bgs)]
        im = draw_shape(shape, fill, bg, size, rng)
        im.save(folder / f"{trigger}_{i:02d}.png")
        (folder / f"{trigger}_{i:02d}.txt").write_text(
            f"{trigger}, a {shape} on a {bg_name} background", encoding="utf-8")
    return folder


def write_demo_concept(folder: Path, count: int = 12, trigger: str = "zkz", seed: int = 7,
                       size: int = 64) -> Path:
    """The demo LoRA's concept: a purple star, a colour the base model was never prompted with.
    (A dot in the middle was tried: at 64 px the 8x8 latents blend it into the star's colour.)"""
    return write_concept(folder, "star", DEMO_COLOUR, count, trigger, seed, size)
