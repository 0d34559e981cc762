"""Importing a user's images: folders, zips (with hostile members) and uploads, never touching
the originals, always producing safe names in a kohya N_name folder."""
from __future__ import annotations

import stat
import zipfile

import pytest
from PIL import Image

from engine.data.folder import DatasetError, scan_dataset
from engine.data.importer import import_concept, import_files, import_zip, safe_filename, subset_folder_name


def _png(path, colour=(200, 30, 30), size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


@pytest.mark.parametrize("name, expected", [
    ("photo.PNG", "photo.png"),
    ("../../etc/passwd.png", "passwd.png"),
    ("C:\\Users\\me\\pic.jpg", "pic.jpg"),
    ('a:b?c*"d".png', "a_b_c__d_.png"),
    ("CON.png", "_CON.png"),
    (".hidden.png", "hidden.png"),
    ("猫の写真.webp", "猫の写真.webp"),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_subset_folder_name():
    assert subset_folder_name("my char", 10) == "10_my char"
    with pytest.raises(DatasetError):
        subset_folder_name("x", 0)


def test_folder_import_copies_images_and_captions_and_leaves_originals(tmp_path):
    src = tmp_path / "src"
    a = _png(src / "a.png")
    (src / "a.txt").write_text("zkz, red", encoding="utf-8")
    _png(src / "b b.jpg".replace(".jpg", ".png"))
    (src / "notes.pdf").write_bytes(b"%PDF-1.4")
    before = a.read_bytes()
    rep = import_concept(src, tmp_path / "work", "zkz", 5)
    dest = tmp_path / "work" / "5_zkz"
    assert sorted(p.name for p in rep.copied) == ["a.png", "b b.png"]
    assert (dest / "a.txt").read_text(encoding="utf-8") == "zkz, red" and rep.captions == 1
    assert rep.skipped == [("notes.pdf", "not_media")]
    assert a.read_bytes() == before and (src / "a.txt").exists()
    index = scan_dataset(tmp_path / "work")
    assert index.subsets[0].repeats == 5 and index.num_images == 2


def test_zip_import_refuses_unsafe_members_and_skips_junk(tmp_path):
    img = _png(tmp_path / "img.png")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(img, "set/one.png")
        zf.writestr("set/one.txt", "a red square")
        zf.write(img, "set/sub/two.png")
        zf.writestr(zipfile.ZipInfo("../evil.png"), img.read_bytes())  # ZipInfo keeps raw names
        zf.writestr(zipfile.ZipInfo("/abs.png"), img.read_bytes())
        zf.write(img, "__MACOSX/set/._one.png")
        zf.writestr("set/.DS_Store", b"junk")
        link = zipfile.ZipInfo("set/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    rep = import_zip(archive, tmp_path / "work" / "1_x")
    names = sorted(p.name for p in rep.copied)
    assert names == ["one.png", "two.png"]
    assert (tmp_path / "work" / "1_x" / "one.txt").read_text() == "a red square"
    why = dict(rep.skipped)
    assert why["../evil.png"] == why["/abs.png"] == "unsafe_path" and why["set/link.png"] == "symlink"
    assert not (tmp_path / "evil.png").exists() and not list((tmp_path / "work").glob(".1_x.unzip*"))


def test_zip_bomb_guard_and_bad_zip(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\0" * 200_000)
    with pytest.raises(DatasetError, match="zip bomb"):
        import_zip(archive, tmp_path / "out", max_bytes=100_000)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable zip"):
        import_zip(tmp_path / "fake.zip", tmp_path / "out2")


def test_uploaded_files_keep_their_browser_names_and_pair_captions(tmp_path):
    t1, t2, t3 = (_png(tmp_path / "tmp" / "x1"), _png(tmp_path / "tmp" / "x2"), tmp_path / "tmp" / "x3")
    t3.write_text("caption for cat", encoding="utf-8")
    rep = import_files([("cat.png", t1), ("cat.PNG", t2), ("cat.txt", t3)], tmp_path / "up")
    assert sorted(p.name for p in rep.copied) == ["cat.png", "cat_1.png"]
    assert (tmp_path / "up" / "cat.txt").read_text(encoding="utf-8") == "caption for cat"
    assert ("cat.PNG", "cat_1.png") in rep.renamed
