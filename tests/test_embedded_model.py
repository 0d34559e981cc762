"""The embedded default model is really trained (the demo LoRA learning from it: test_demo_learning.py).

These are the project's quality tests of training: they generate images and measure them
(foreground colour, shape by bounding-box fill, share of purple pixels)."""
from __future__ import annotations

import pytest
from safetensors import safe_open

from engine.demo.measure import dominant_colour, shape_class
from engine.generate.sampler import SampleSpec, build_pipeline, generate
from engine.models.loader import EMBEDDED_DIR, load_sd_components

SEEDS = range(6)


@pytest.fixture(scope="module")
def base():
    return load_sd_components("embedded", local_files_only=True)


def images(pipe, prompt: str, seeds=SEEDS, steps: int = 20):
    return [generate(pipe, SampleSpec(prompt, seed=s, steps=steps, cfg_scale=5.0, width=64, height=64))[0]
            for s in seeds]


def test_shipped_files_are_small_and_loadable():
    single = EMBEDDED_DIR.with_suffix(".safetensors")
    assert (EMBEDDED_DIR / "model_index.json").is_file() and single.is_file()
    total = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert total < 21e6 and single.stat().st_size < 20e6  # "under ~20 MB" (folder: 20.1 MB)
    with safe_open(str(single), "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())


def test_single_file_matches_the_folder(base):
    from diffusers import StableDiffusionPipeline

    single = StableDiffusionPipeline.from_single_file(
        str(EMBEDDED_DIR.with_suffix(".safetensors")), config=str(EMBEDDED_DIR), local_files_only=True,
        safety_checker=None)
    a, b = base.unet.state_dict(), single.unet.state_dict()
    assert all((a[k] - b[k].float()).abs().max() == 0 for k in a)


def test_vae_blends_colours_in_a_straight_line(base):
    """Decoding latents blended from a black star to the demo's purple star gets steadily more
    purple (the earlier VAE went through green: 0 purple pixels until the very end), so a LoRA
    at weight 0.5 can draw something in between."""
    from engine.demo.pretrain import vae_blend_report

    share = vae_blend_report(base.vae.float(), seed=0)
    assert share[0] < 0.01 and all(b > a for a, b in zip(share, share[1:])), share
    assert share[2] > 0.3 * share[4], share


CASES = [("a red circle on a white background", "red", "circle"),
         ("a blue square on a white background", "blue", "square")]


@pytest.fixture(scope="module")
def drawn(base):
    pipe = build_pipeline(base)
    return {prompt: images(pipe, prompt) for prompt, _, _ in CASES}


@pytest.mark.parametrize("prompt, colour, shape", CASES)
def test_base_model_draws_the_asked_colour(drawn, prompt, colour, shape):
    """The foreground's median colour is nearest the asked palette colour (of all 8) for most
    of 6 seeds."""
    got = [dominant_colour(im) for im in drawn[prompt]]
    assert sum(c == colour for c in got) >= 4, got


@pytest.mark.parametrize("prompt, colour, shape", CASES)
def test_base_model_draws_the_asked_shape(drawn, prompt, colour, shape):
    got = [shape_class(im) for im in drawn[prompt]]
    assert sum(s == shape for s in got) >= 4, got


def test_shape_measure_is_right_on_ground_truth():
    from engine.demo.shapes import all_specs, make_image

    for i, spec in enumerate(all_specs()):
        im = make_image(spec, i)
        assert dominant_colour(im) == spec.colour, spec
        assert shape_class(im) == {"square": "square", "circle": "circle"}.get(spec.shape, "pointy"), spec


def test_cross_measure_tells_the_new_shape_from_the_known_ones():
    """The learning tests' new shape: every drawn cross counts as one, no circle, square,
    triangle or star does (10 positions x 2 colours x 2 backgrounds each)."""
    import random

    from engine.demo.measure import is_cross
    from engine.demo.shapes import BACKGROUNDS, COLOURS, SHAPES, draw_shape

    for shape in ("cross", *SHAPES):
        found = [is_cross(draw_shape(shape, COLOURS[c], BACKGROUNDS[b], 64, random.Random(k)))
                 for k in range(10) for c in ("red", "blue") for b in ("white", "black")]
        assert sum(found) == (len(found) if shape == "cross" else 0), shape


def test_shape_measure_ignores_a_stray_speck():
    """A dark pixel in a corner (left by the VAE's zero padding on white) is not part of the shape."""
    import random

    from engine.demo.measure import fill_ratio
    from engine.demo.shapes import COLOURS, draw_shape

    im = draw_shape("square", COLOURS["red"], (250, 250, 250), 64, random.Random(3))
    clean = fill_ratio(im)
    im.putpixel((0, 0), (180, 182, 173))
    assert clean > 0.95 and fill_ratio(im) == clean


@pytest.mark.parametrize("radius, expected", [(0.2, "square"), (0.4, "circle"), (0.5, "circle")])
def test_shape_measure_tells_a_square_from_a_rounded_blob(radius, expected):
    """Where the line lies: a square with slightly rounded corners (radius 20% of its side) is
    a square, a blob rounded at 40% reads as a circle (its box corners are half empty; a
    bounding-box fill of 0.86 alone would not tell it from a square with concave sides)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (250, 250, 250))
    ImageDraw.Draw(im).rounded_rectangle((14, 14, 49, 49), radius=round(36 * radius), fill=(30, 60, 220))
    assert shape_class(im) == expected
