"""WD14 (onnxruntime) and BLIP (transformers) captioners on tiny models built by the tests: the
real loading, preprocessing, thresholds, tag cleaning and caption writing run offline."""
from __future__ import annotations

import pytest
from captioning_models import build_tiny_blip, build_tiny_wd14
from PIL import Image

from engine.captioning.run import caption_images, dataset_images
from engine.captioning.sources import CaptionModelError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("capdata") / "5_set"
    root.mkdir()
    Image.new("RGB", (48, 40), (220, 30, 30)).save(root / "red.png")
    Image.new("RGB", (40, 40), (30, 60, 220)).save(root / "blue.png")
    return root


@pytest.fixture(scope="module")
def wd14(tmp_path_factory):
    from engine.captioning.wd14 import WD14Tagger

    return WD14Tagger.load(str(build_tiny_wd14(tmp_path_factory.mktemp("wd14"))), local_files_only=True)


def test_wd14_thresholds_order_and_cleaning(wd14, images):
    from engine.captioning.wd14 import WD14Options

    red, blue = images / "red.png", images / "blue.png"
    opts = WD14Options(exclude=["white background"])
    assert wd14.caption([red, blue], opts) == ["character a, red shape, ^_^", "blue \\(thing\\), ^_^"]
    strict = WD14Options(character_threshold=0.8, general_threshold=0.7, exclude=["white_background"])
    assert wd14.caption([red], strict) == ["red shape"]
    raw = WD14Options(underscores_to_spaces=False, escape_brackets=False, include_rating=True, exclude=[])
    assert wd14.caption([blue], raw) == ["general, blue_(thing), white_background, ^_^"]


def test_caption_modes_and_trigger_write_txt_files(wd14, images, tmp_path):
    from engine.captioning.wd14 import WD14Options

    work = tmp_path / "work"
    work.mkdir()
    for p in images.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    (work / "blue.txt").write_text("my own caption", encoding="utf-8")
    opts = WD14Options(exclude=["white background"])
    rep = caption_images(dataset_images(work), wd14, opts, mode="skip", trigger="zkz")
    assert [p.name for p in rep.written] == ["red.png"] and [p.name for p in rep.kept] == ["blue.png"]
    assert (work / "red.txt").read_text(encoding="utf-8") == "zkz, character a, red shape, ^_^"
    caption_images(dataset_images(work), wd14, opts, mode="append")
    assert (work / "blue.txt").read_text(encoding="utf-8") == "my own caption, blue \\(thing\\), ^_^"
    caption_images([work / "blue.png"], wd14, opts, mode="overwrite")
    assert (work / "blue.txt").read_text(encoding="utf-8") == "blue \\(thing\\), ^_^"


def test_cli_caption_with_local_wd14(tmp_path, images):
    import launcher

    model = build_tiny_wd14(tmp_path / "m")
    work = tmp_path / "w"
    work.mkdir()
    (work / "red.png").write_bytes((images / "red.png").read_bytes())
    rc = launcher.main(["caption", str(work), "--model", str(model), "--offline", "--trigger", "zkz",
                        "--character-threshold", "0.8", "--exclude", "white background,^_^"])
    assert rc == 0 and (work / "red.txt").read_text(encoding="utf-8") == "zkz, red shape"
    assert launcher.main(["caption", str(work), "--model", "nobody/no-such-tagger", "--offline"]) == 2


def test_missing_model_gives_a_clear_error(tmp_path):
    from engine.captioning.wd14 import WD14Tagger

    with pytest.raises(CaptionModelError, match="not in the local cache"):
        WD14Tagger.load("SmilingWolf/not-downloaded-here", local_files_only=True)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    with pytest.raises(CaptionModelError, match="not a usable ONNX model"):
        WD14Tagger.load(str(tmp_path))


def test_blip_captions_with_a_tiny_model(tmp_path, images):
    from captioning_models import VOCAB

    from engine.captioning.blip import BlipCaptioner, BlipOptions

    blip = BlipCaptioner.load(str(build_tiny_blip(tmp_path / "blip")), local_files_only=True)
    opts = BlipOptions(max_new_tokens=6, min_new_tokens=3, num_beams=1)
    paths = sorted(images.iterdir())
    first = blip.caption(paths, opts)
    assert len(first) == 2 and all(first)
    assert all(set(c.split()) <= set(VOCAB) for c in first)
    assert blip.caption(paths, opts) == first  # deterministic
    work = tmp_path / "w"
    work.mkdir()
    for p in paths:
        (work / p.name).write_bytes(p.read_bytes())
    rep = caption_images(dataset_images(work), blip, opts, trigger="zkz")
    assert len(rep.written) == 2
    assert (work / "blue.txt").read_text(encoding="utf-8") == "zkz, " + first[0]


def test_models_load_from_the_hub_cache_offline(tmp_path, images):
    """A hub repo id resolves through huggingface_hub's cache (what a first online run leaves)."""
    import shutil

    from engine.captioning.blip import BlipCaptioner, BlipOptions
    from engine.captioning.wd14 import WD14Options, WD14Tagger

    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo_id, build in (("SmilingWolf/tiny-tagger", build_tiny_wd14), ("Salesforce/tiny-blip", build_tiny_blip)):
        repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(build(tmp_path / repo_id.split("/")[1]), repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    tagger = WD14Tagger.load("SmilingWolf/tiny-tagger", local_files_only=True, cache_dir=tmp_path / "hub")
    assert tagger.caption([images / "blue.png"], WD14Options(exclude=["white background"])) == ["blue \\(thing\\), ^_^"]
    blip = BlipCaptioner.load("Salesforce/tiny-blip", local_files_only=True, cache_dir=tmp_path / "hub")
    assert blip.caption([images / "red.png"], BlipOptions(max_new_tokens=4, num_beams=1, min_new_tokens=2))[0]
