"""The working copy: crops to multiples of 64, focal crop finds the subject, long images are
split into overlapping tiles, flips are mirrors, captions follow, bad files are reported."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.data.folder import scan_dataset
from engine.data.preprocess import PreprocessOptions, focal_crop, preprocess_dataset, split_tiles


def _dataset(root):
    sub = root / "3_thing"
    sub.mkdir(parents=True)
    wide = Image.new("RGB", (300, 100), (240, 240, 240))
    ImageDraw.Draw(wide).ellipse((240, 30, 280, 70), fill=(200, 20, 20))  # subject on the right
    wide.save(sub / "wide.png")
    (sub / "wide.txt").write_text("a red dot", encoding="utf-8")
    Image.new("RGB", (96, 160), (20, 120, 200)).save(sub / "tall.jpg")
    (sub / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_centre_crop_working_copy(tmp_path):
    index = scan_dataset(_dataset(tmp_path / "src"))
    rep = preprocess_dataset(index, tmp_path / "work", PreprocessOptions(resolution=64, flip_copies=True))
    names = sorted(p.name for p in rep.written)
    assert names == ["tall.png", "tall_flip.png", "wide.png", "wide_flip.png"]
    assert all(Image.open(p).size == (64, 64) for p in rep.written)
    assert (tmp_path / "work" / "3_thing" / "wide_flip.txt").read_text(encoding="utf-8") == "a red dot"
    assert [p.name for p, _ in rep.skipped] == ["broken.png"] and rep.images_per_second > 0
    a = np.asarray(Image.open(tmp_path / "work" / "3_thing" / "wide.png"))
    b = np.asarray(Image.open(tmp_path / "work" / "3_thing" / "wide_flip.png"))
    assert np.array_equal(a[:, ::-1], b)
    assert scan_dataset(tmp_path / "work").subsets[0].repeats == 3  # repeats survive


def test_focal_crop_keeps_the_subject_centre_crop_loses_it(tmp_path):
    im = Image.new("RGB", (300, 100), (240, 240, 240))
    ImageDraw.Draw(im).ellipse((240, 30, 280, 70), fill=(200, 20, 20))

    def red(x):
        arr = np.asarray(x).astype(int)
        return int(((arr[..., 0] > 150) & (arr[..., 1] < 80)).sum())
    assert red(focal_crop(im, 64, 64)) > 100
    from engine.data.images import resize_center_crop
    assert red(resize_center_crop(im, 64, 64)) == 0


def test_split_oversized_tiles_cover_and_overlap():
    im = Image.new("RGB", (500, 100))
    tiles = split_tiles(im, threshold=0.5, overlap=0.2)
    assert all(t.size == (100, 100) for t in tiles)
    n = len(tiles)
    stride = (500 - 100) / (n - 1)
    assert stride <= 80 + 1e-9 and n == 6  # >= 20% overlap, whole width covered
    assert split_tiles(Image.new("RGB", (150, 100)), 0.5, 0.2)[0].size == (150, 100)  # not oversized
    assert len(split_tiles(Image.new("RGB", (100, 500)), 0.5, 0.2)) == 6  # tall too


def test_bucket_mode_keeps_aspect_in_multiples_of_64(tmp_path):
    index = scan_dataset(_dataset(tmp_path / "src"))
    rep = preprocess_dataset(index, tmp_path / "work", PreprocessOptions(
        resolution=128, crop="bucket", min_bucket=64, max_bucket=256, split_oversized=True))
    sizes = {p.name: Image.open(p).size for p in rep.written}
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in sizes.values())
    assert sizes["tall.png"][1] > sizes["tall.png"][0]
    assert {k for k in sizes if k.startswith("wide_tile")} == {"wide_tile0.png", "wide_tile1.png", "wide_tile2.png", "wide_tile3.png"}
