"""Every kind of bad or unusual input, as a real file: the report says what it is, nothing
crashes, originals are untouched, and load_rgb turns the usable ones into clean RGB."""
from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.data.images import load_rgb
from engine.data.validate import validate_folder

RES = 64


def _photo(seed=0, size=(96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    noise = rng.integers(0, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    d = tmp_path_factory.mktemp("messy")
    _photo(0).save(d / "good.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    buf = io.BytesIO()
    _photo(1, (256, 256)).save(buf, "JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (d / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    (d / "text_as.jpg").write_text("hello, I am not a picture")
    frames = [Image.new("RGB", (96, 96), c) for c in ("red", "blue")]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _photo(2, (32, 32)).save(d / "tiny.png")
    Image.new("1", (14000, 14000)).save(d / "bomb.png")
    rgba = Image.new("RGBA", (96, 96), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (24, 24, 72, 72))
    rgba.save(d / "alpha.png")
    _photo(3).convert("CMYK").save(d / "cmyk.jpg")
    _photo(4).convert("P").save(d / "palette.png")
    Image.new("LA", (96, 96), (128, 200)).save(d / "gray_alpha.png")
    Image.fromarray((np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16)).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _photo(5, (128, 96)).save(d / "rotated.jpg", exif=exif)
    _photo(6).save(d / "图片 猫.png")
    _photo(7).save(d / " spaced.png")
    shutil.copy(d / "good.png", d / "good_copy.png")
    xs = np.linspace(0, 6 * np.pi, 128)
    scene = (127 + 120 * np.sin(xs)[None, :] * np.cos(xs / 3)[:, None]).astype(np.uint8)
    Image.fromarray(np.stack([scene, scene[::-1], scene.T], -1)).save(d / "scene.png")
    Image.open(d / "scene.png").resize((90, 90)).save(d / "scene_small.jpg", quality=85)
    (d / "good.txt").write_text("a caption, not an image")
    return d


@pytest.fixture(scope="module")
def report(messy):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in messy.iterdir()}
    rep = validate_folder(messy, RES)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in messy.iterdir()}
    assert before == after, "validation must never modify the originals"
    return {f.path.name: f for f in rep.files}, rep


@pytest.mark.parametrize("name, field, text", [
    ("corrupt.png", "errors", "not a readable image"),
    ("truncated.jpg", "errors", "corrupt or truncated"),
    ("notes.pdf", "errors", "not an image file type (.pdf)"),
    ("text_as.jpg", "errors", "not a readable image"),
    ("bomb.png", "errors", "decompression bomb"),
    ("anim.gif", "notes", "animated (2 frames): the first frame is used"),
    ("tiny.png", "warnings", "smaller than the training resolution (32x32 < 64)"),
    ("alpha.png", "notes", "has transparency"),
    ("gray_alpha.png", "notes", "has transparency"),
    ("cmyk.jpg", "notes", "colour mode CMYK"),
    ("palette.png", "notes", "colour mode P"),
    ("sixteen.png", "notes", "colour mode I;16"),
    ("rotated.jpg", "notes", "EXIF orientation 6"),
    ("图片 猫.png", "notes", "non-ASCII file name"),
    (" spaced.png", "warnings", "odd file name"),
    ("good_copy.png", "errors", "exact duplicate of good.png"),  # left out: it would double good.png
    ("scene_small.jpg", "warnings", "looks nearly identical to scene.png"),
])
def test_each_problem_is_reported(report, name, field, text):
    files, _ = report
    assert any(text in msg for msg in getattr(files[name], field)), vars(files[name])
    assert files[name].ok == (field != "errors")


def test_summary_and_clean_file(report):
    files, rep = report
    assert files["good.png"].ok and not files["good.png"].warnings
    assert "good.txt" not in files
    assert rep.summary().startswith(f"{len(files)} files: {len(rep.usable)} usable, 6 unusable")
    assert len(rep.duplicates) == 1 and len(rep.near_duplicates) >= 1


def test_usable_files_load_as_clean_rgb(messy, report):
    files, _ = report
    for name, f in files.items():
        if f.ok:
            im = load_rgb(f.path)
            assert im.mode == "RGB", name
    alpha = np.asarray(load_rgb(messy / "alpha.png"))
    assert tuple(alpha[0, 0]) == (255, 255, 255) and tuple(alpha[48, 48]) == (0, 0, 255)
    assert load_rgb(messy / "rotated.jpg").size == (96, 128)  # upright after EXIF rotation
    assert np.asarray(load_rgb(messy / "anim.gif"))[0, 0].tolist() == [255, 0, 0]
    sixteen = np.asarray(load_rgb(messy / "sixteen.png"))
    assert sixteen.max() == 255 and sixteen.min() == 0
