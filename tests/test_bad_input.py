"""Bad and hostile input gets one clear message, never a traceback, and never a half-written or
silently wrong result: job files, dataset folders and zips, presets, resume states, picks, a run
that breaks its weights in its last step, a disk that fills up, two jobs at once."""
from __future__ import annotations

import errno
import struct
import tempfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import lora_job
from PIL import Image

DEEP_ARRAY = "a = " + "[" * 5000 + "]" * 5000


def _png(path: Path, colour=(200, 30, 30), size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


# ---------------------------------------------------------------- job files

def _job(tmp_path, **sections) -> dict:
    job = lora_job(tmp_path / "model", tmp_path / "data", tmp_path / "out")
    for section, values in sections.items():
        job.setdefault(section, {}).update(values)
    return job


def test_deeply_nested_toml_is_one_clear_error(tmp_path, capsys):
    from engine.config.job import ConfigError, load_config, parse_job_text
    from engine.config.preset_share import PresetError, parse_preset, to_code
    from launcher import main

    for text in (DEEP_ARRAY, "a = " + "{b = " * 3000 + "1" + "}" * 3000):
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse_job_text(text)
        with pytest.raises(PresetError, match="nested too deeply"):
            parse_preset(to_code(text))
    (tmp_path / "deep.toml").write_text(DEEP_ARRAY, encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(tmp_path / "deep.toml")
    assert main(["train", "--config", str(tmp_path / "deep.toml")]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_a_config_that_is_a_folder_or_not_text(tmp_path, capsys):
    from launcher import main

    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a folder; give the job's .toml file" in capsys.readouterr().err
    (tmp_path / "latin1.toml").write_bytes('[model]\nbase = "caf\xe9"\n'.encode("latin-1"))
    assert main(["train", "--config", str(tmp_path / "latin1.toml")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    # a job saved by Windows Notepad as "Unicode" (UTF-16 with BOM) is read, not refused
    from engine.config.job import load_config

    job = tomli_w.dumps(_job(tmp_path))
    (tmp_path / "utf16.toml").write_bytes(job.encode("utf-16"))
    assert load_config(tmp_path / "utf16.toml").output.name == "tiny"


@pytest.mark.parametrize("sections, field", [
    ({"dataset": {"caption_extension": "/../../../etc/passwd"}}, "dataset.caption_extension"),
    ({"dataset": {"caption_extension": "txt"}}, "dataset.caption_extension"),
    ({"sample": {"prompts": ["zkz --w 0 --h 64"]}}, "--w must be between 64 and 4096"),
    ({"sample": {"prompts": ["zkz --w -64"]}}, "--w must be between 64 and 4096"),
    ({"sample": {"prompts": ["zkz --d 1180591620717411303424"]}}, "--d must be between 0 and 18446744073709551615"),
    ({"sample": {"prompts": ["zkz --l nan"]}}, "--l must be between 1.0 and 30.0"),
    ({"sample": {"prompts": ["zkz --s 0"]}}, "--s must be between 1 and 150"),
    ({"sample": {"cfg_scale": float("nan")}}, "sample.cfg_scale"),
    ({"sample": {"seed": 2**70}}, "sample.seed"),
    ({"network": {"alpha": float("inf")}}, "network.alpha"),
    ({"optimizer": {"weight_decay": float("inf")}}, "optimizer.weight_decay"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr"),
    ({"training": {"noise_offset": float("nan")}}, "training.noise_offset"),
])
def test_every_field_is_checked_when_the_job_is_loaded(tmp_path, sections, field):
    """Refused at load, not after hours of training (a size-0 sample, a NaN cfg) or in the NaN
    guard (an infinite alpha or weight decay)."""
    from engine.config.job import ConfigError, parse_job_text

    text = tomli_w.dumps(_job(tmp_path, **sections))
    with pytest.raises(ConfigError) as err:
        parse_job_text(text)
    assert field in str(err.value)


def test_sample_limits_are_one_definition():
    from engine.config.job import SampleConfig
    from engine.config.sample_limits import SAMPLE_LIMITS

    for name in ("steps", "cfg_scale", "seed"):
        meta = {type(m).__name__: m for m in SampleConfig.model_fields[name].metadata}
        assert (meta["Ge"].ge, meta["Le"].le) == SAMPLE_LIMITS[name]


# ---------------------------------------------------------------- dataset import

def _zip_with(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _patch_member(archive: Path, name: str, *, flags: int | None = None, size: int | None = None,
                  flip_data: bool = False) -> None:
    """Rewrite one member's headers (local and central) the way a hostile or damaged zip has them."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        local = zf.getinfo(name).header_offset
    central = data.find(b"PK\x01\x02")
    while data[central + 46:central + 46 + struct.unpack_from("<H", data, central + 28)[0]] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    if flags is not None:
        struct.pack_into("<H", data, local + 6, flags)
        struct.pack_into("<H", data, central + 8, flags)
    if size is not None:
        struct.pack_into("<I", data, local + 22, size)
        struct.pack_into("<I", data, central + 24, size)
    if flip_data:
        start = local + 30 + struct.unpack_from("<H", data, local + 26)[0] + struct.unpack_from("<H", data, local + 28)[0]
        data[start + 10] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_zip_members_that_cannot_be_used_are_reported_and_the_rest_imported(tmp_path):
    from engine.data.importer import import_zip

    png = _png(tmp_path / "a.png").read_bytes()
    long_name = "很长的名字" * 30 + ".png"  # 450+ bytes in UTF-8: more than any file system allows
    archive = _zip_with(tmp_path / "x.zip", {"good.png": png, "locked.png": png, "badcrc.png": png,
                                             "liar.png": png, "liar2.png": png, long_name: png})
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("packed.png", png)
    _patch_member(archive, "locked.png", flags=0x1)
    _patch_member(archive, "badcrc.png", flip_data=True)
    _patch_member(archive, "liar.png", size=100)          # says 100 bytes, holds more
    _patch_member(archive, "liar2.png", size=len(png) + 5000)  # says more: its bytes are intact
    rep = import_zip(archive, tmp_path / "ws" / "1_x")
    skipped = dict(rep.skipped)
    assert skipped == {"locked.png": "encrypted", "badcrc.png": "corrupt", "liar.png": "corrupt",
                       "packed.png": "compression"}, rep.skipped
    names = sorted(p.name for p in rep.copied)
    assert names[:2] == ["good.png", "liar2.png"] and len(names) == 3
    assert (rep.folder / "liar2.png").read_bytes() == png
    shortened = names[2]
    assert len(shortened.encode()) <= 180 and shortened.endswith(".png")
    assert (long_name, shortened) in rep.renamed
    assert not [p for p in (tmp_path / "ws").rglob("*") if p.name.startswith(".")]  # scratch removed


def test_zip_caps_count_the_bytes_really_unpacked(tmp_path, monkeypatch):
    import engine.data.importer as importer
    from engine.data.folder import DatasetError

    monkeypatch.setattr(importer, "MAX_MEMBER_BYTES", 64 << 10)
    big = b"\0" * (1 << 20)
    archive = _zip_with(tmp_path / "b.zip", {"big.png": big, "ok.png": _png(tmp_path / "o.png").read_bytes()},
                        zipfile.ZIP_DEFLATED)
    rep = importer.import_zip(archive, tmp_path / "ws" / "1_b")
    assert dict(rep.skipped) == {"big.png": "too_big"} and [p.name for p in rep.copied] == ["ok.png"]
    # the header of a bomb says it is small: what comes out is counted, and the member refused
    _patch_member(archive, "big.png", size=10)
    rep = importer.import_zip(archive, tmp_path / "ws" / "1_c")
    assert dict(rep.skipped) == {"big.png": "corrupt"}
    # the whole archive above its cap: refused, nothing left behind
    many = _zip_with(tmp_path / "m.zip", {f"{i}.png": b"\1" * (60 << 10) for i in range(5)}, zipfile.ZIP_DEFLATED)
    with pytest.raises(DatasetError, match="possible zip bomb"):
        importer.import_zip(many, tmp_path / "ws" / "1_m", max_bytes=200 << 10)
    assert not (tmp_path / "ws" / "1_m").exists() or not any((tmp_path / "ws" / "1_m").iterdir())


def test_the_validator_streams_a_huge_file(tmp_path):
    from engine.data.validate import check_image

    junk = tmp_path / "junk.png"
    with open(junk, "wb") as fh:
        fh.write(b"\0" * (64 << 20))
    tracemalloc.start()
    rep = check_image(junk, 512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not rep.ok and peak < (16 << 20), peak


def test_folder_links_that_lead_outside_are_skipped(tmp_path):
    from engine.data.importer import import_concept

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0", encoding="utf-8")
    src = tmp_path / "photos"
    _png(src / "a.png")
    (src / "passwd.png").symlink_to(secret)
    (src / "outside.png").symlink_to(_png(tmp_path / "elsewhere.png"))
    (src / "alias.png").symlink_to(src / "a.png")  # inside: harmless
    rep = import_concept(src, tmp_path / "ws", "me", 1)
    assert sorted(p.name for p in rep.copied) == ["a.png", "alias.png"]
    assert sorted(rep.skipped) == [("outside.png", "symlink"), ("passwd.png", "symlink")]
    assert not any("root:x" in p.read_bytes().decode("latin-1") for p in rep.folder.iterdir())


def test_captions_in_utf16_or_with_a_bom_are_read_and_bad_ones_reported(tmp_path):
    from engine.data.importer import import_concept

    src = tmp_path / "photos"
    for name in ("a", "b", "c", "d"):
        _png(src / f"{name}.png")
    (src / "a.txt").write_bytes("zkz, 红色的星星".encode("utf-16"))
    (src / "b.txt").write_bytes("zkz, star".encode("utf-8-sig"))
    (src / "c.txt").write_bytes(b"zkz, \xff\xfe\xfa bad")  # no BOM, not UTF-8
    (src / "d.txt").write_bytes("zkz, 普通".encode("utf-8"))
    rep = import_concept(src, tmp_path / "ws", "me", 1)
    out = rep.folder
    assert (out / "a.txt").read_text(encoding="utf-8") == "zkz, 红色的星星"
    assert (out / "b.txt").read_bytes() == b"zkz, star"
    assert (out / "d.txt").read_text(encoding="utf-8") == "zkz, 普通"
    assert not (out / "c.txt").exists() and ("c.txt", "caption_undecodable") in rep.skipped
    assert (out / "c.png").exists() and rep.captions == 3


def test_images_without_a_stem_or_an_extension_are_kept_under_a_safe_name(tmp_path):
    from engine.data.folder import scan_dataset
    from engine.data.importer import import_files

    dot = _png(tmp_path / "in" / "one" / "..png")
    bare = _png(tmp_path / "in" / "two" / "png")
    text = tmp_path / "in" / "three" / "readme"
    text.parent.mkdir()
    text.write_text("not an image", encoding="utf-8")
    rep = import_files([dot, bare, text], tmp_path / "ws" / "1_x")
    assert sorted(new for _, new in rep.renamed) == ["png.png", "png_1.png"]
    assert rep.skipped == [("readme", "not_media")]
    assert scan_dataset(tmp_path / "ws").num_images == 2  # both are training images now


# ---------------------------------------------------------------- image shapes and working copies

def test_an_aspect_ratio_bomb_is_refused_before_any_resize(tmp_path, tiny_model_dir):
    from engine.config.job import parse_config
    from engine.data.folder import DatasetError, scan_dataset
    from engine.data.preprocess import PreprocessOptions, preprocess_dataset
    from engine.data.validate import check_image
    from engine.training.loop import train

    data = tmp_path / "data" / "1_x"
    strip = data / "strip.png"
    data.mkdir(parents=True)
    Image.new("L", (20000, 2), 0).save(strip, optimize=True)
    assert strip.stat().st_size < 1000  # a tiny file ...
    _png(data / "ok.png")
    rep = check_image(strip, 512)
    assert not rep.ok and "extreme shape (20000x2" in rep.errors[0]
    # ... that would have asked for ~10 GB when resized: skipped with its reason
    out = preprocess_dataset(scan_dataset(tmp_path / "data"), tmp_path / "prep", PreprocessOptions(resolution=512))
    assert [p.name for p in out.written] == ["ok.png"] and out.skipped[0][0] == strip
    # training leaves it out before any resize (and says so); the rest trains
    from engine.data.dataset import TrainingSamples
    from engine.training.callbacks import Callbacks

    class Log(Callbacks):
        lines: list[str] = []

        def on_log(self, message):
            self.lines.append(message)

    result = train(parse_config(lora_job(tiny_model_dir, tmp_path / "data", tmp_path / "out",
                                         training={"epochs": 1})), Log())
    assert any("left out" in line and "strip.png" in line and "extreme shape" in line for line in Log.lines)
    assert result.final_path.is_file()
    with pytest.raises(DatasetError, match="extreme shape"):  # and the dataset itself refuses it too
        TrainingSamples(scan_dataset(tmp_path / "data"), 64)


def test_working_copy_names_never_collide(tmp_path):
    from engine.data.folder import scan_dataset
    from engine.data.preprocess import PreprocessOptions, preprocess_dataset

    src = tmp_path / "data" / "1_x"
    src.mkdir(parents=True)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(src / "a.jpg", format="JPEG")
    _png(src / "a.png", (0, 255, 0))
    b = Image.new("RGB", (64, 64), (0, 0, 255))
    b.paste((255, 255, 0), (0, 0, 16, 64))  # not symmetric: its mirror differs
    b.save(src / "b.png")
    _png(src / "b_flip.png", (9, 9, 9))
    _png(src / "c.png", (50, 50, 50))
    rep = preprocess_dataset(scan_dataset(tmp_path / "data"), tmp_path / "prep",
                             PreprocessOptions(resolution=64, flip_copies=True))
    files = sorted((tmp_path / "prep" / "1_x").glob("*.png"))
    assert len(rep.written) == 10 == len(set(rep.written)) == len(files)
    colours = sorted(Image.open(p).convert("RGB").getpixel((40, 32)) for p in files)
    assert colours.count((0, 0, 255)) == 2  # b.png and its mirror, not overwritten by b_flip.png
    assert colours.count((9, 9, 9)) == 2  # the original b_flip.png and its mirror
    assert colours.count((0, 255, 0)) == 2  # a.png, not overwritten by a.jpg


# ---------------------------------------------------------------- presets and picks

def test_preset_files_in_other_encodings(tmp_path, capsys):
    from engine.config.preset_share import PresetError, read_preset_file
    from launcher import main

    preset = '[metadata]\nname = "星星"\nschema_version = 1\n\n[training]\nepochs = 3\n'
    (tmp_path / "u16.toml").write_bytes(preset.encode("utf-16"))
    assert "星星" in read_preset_file(tmp_path / "u16.toml")
    (tmp_path / "bad.toml").write_bytes(b"[metadata]\nname = \"\xe9\xff\"\n")
    with pytest.raises(PresetError, match="not UTF-8 or UTF-16 text"):
        read_preset_file(tmp_path / "bad.toml")
    args = ["preset", "import", "--base", "embedded", "--dataset", str(tmp_path), "--out", str(tmp_path / "j.toml")]
    assert main([*args[:2], str(tmp_path / "bad.toml"), *args[2:]]) == 2
    assert "not UTF-8 or UTF-16" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path), *args[2:]]) == 2  # a folder
    assert "cannot read the preset file" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "u16.toml"), *args[2:]]) == 0


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/loraforge-pwned",))


def test_pick_refuses_a_malicious_or_broken_file_with_a_message(tmp_path, capsys):
    import pickle

    from launcher import main

    evil = tmp_path / "evil.pt"
    torch.save({320: [_Payload()]}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert main(["pick", str(evil), "--name", "x", "--out", str(tmp_path / "o")]) == 2
    assert "not a plain tensors-only .pt file" in capsys.readouterr().err
    assert not Path("/tmp/loraforge-pwned").exists()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 64)
    assert main(["pick", str(broken), "--name", "x", "--out", str(tmp_path / "o")]) == 2
    assert "not a readable .safetensors file" in capsys.readouterr().err


# ---------------------------------------------------------------- resume from damaged states

def _states(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config.job import parse_config
    from engine.training.loop import train

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out", training={"epochs": 3},
                   output={"save_state": True, "keep_states": 3})
    cfg = parse_config(job)
    train(cfg)
    return cfg


@pytest.mark.parametrize("damage", ["truncated", "garbage_json", "code_in_pt", "zero_byte"])
def test_a_damaged_newest_state_falls_back_to_the_previous_one(tmp_path, tiny_model_dir, tiny_dataset, damage):
    from engine.training.loop import _find_resume_state
    from engine.training.state import state_candidates, state_root

    cfg = _states(tmp_path, tiny_model_dir, tiny_dataset)
    newest, previous = state_candidates(state_root(cfg))[:2]
    if damage == "truncated":
        f = newest / "trainable.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage_json":
        (newest / "meta.json").write_bytes(b"\x00{not json")
    elif damage == "code_in_pt":
        torch.save({"optimizer": _Payload()}, newest / "state.pt")
    else:
        (newest / "state.pt").write_bytes(b"")
    state = _find_resume_state(cfg, "auto")
    assert state.path == previous
    assert len(state.passed_over) == 1 and str(newest) in str(state.passed_over[0])
    assert not Path("/tmp/loraforge-pwned").exists()


def test_no_usable_state_is_a_clear_error_and_latest_cannot_point_outside(tmp_path, tiny_model_dir, tiny_dataset,
                                                                         capsys):
    from engine.i18n import Translator, describe_error
    from engine.training.loop import _find_resume_state
    from engine.training.state import StateError, find_latest, state_candidates, state_root

    cfg = _states(tmp_path, tiny_model_dir, tiny_dataset)
    root = state_root(cfg)
    # a pointer aiming elsewhere (a folder that looks like a complete state) is ignored
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for f in ("trainable.safetensors", "state.pt", "meta.json"):
        (decoy / f).write_bytes(b"x")
    for pointer in (str(decoy), "../../decoy", "step-99999999/../../decoy"):
        (root / "latest").write_text(pointer, encoding="utf-8")
        assert find_latest(root).parent == root
    for state in state_candidates(root):
        (state / "meta.json").write_text("[]", encoding="utf-8")
    with pytest.raises(StateError) as err:
        _find_resume_state(cfg, "auto")
    assert err.value.key == "state_all_damaged" and "damaged (meta.json" in str(err.value)
    assert "已损坏" in describe_error(err.value, Translator("zh"))
    from launcher import main

    (tmp_path / "job.toml").write_text(tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    assert main(["train", "--config", str(tmp_path / "job.toml"), "--resume"]) == 1
    assert "no usable training state" in capsys.readouterr().err


# ---------------------------------------------------------------- what is written

def _break_weights_at_the_end(unet):
    """A callback: the last optimizer step turns a weight infinite (as an absurd learning rate
    does) while that step's loss was still finite."""
    from engine.training.callbacks import Callbacks

    class Break(Callbacks):
        def on_step(self, info):
            if info.step == info.total_steps:
                with torch.no_grad():
                    next(p for n, p in unet.named_parameters() if "lora" in n).view(-1)[0] = float("inf")

    return Break()


def test_non_finite_weights_are_never_saved(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config.job import parse_config
    from engine.models.loader import load_sd_components
    from engine.training.guards import TrainingDiverged
    from engine.training.loop import train

    model = load_sd_components(str(tiny_model_dir), local_files_only=True)
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2}))
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, _break_weights_at_the_end(model.unet), model=model)
    assert err.value.key == "diverged_weights" and "the final file was not saved" in str(err.value)
    assert not (tmp_path / "tiny.safetensors").exists()
    assert (tmp_path / "tiny-000001.safetensors").exists()  # the last good file stays
    assert not list(tmp_path.glob(".*.tmp"))


def test_stale_temporary_files_of_this_job_are_cleaned_at_start(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config.job import parse_config
    from engine.training.loop import train

    def temp_of(target: str) -> Path:  # exactly how engine.fileio.atomic_write names them
        fd, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=tmp_path)
        import os

        os.write(fd, b"\0" * 4096)
        os.close(fd)
        return Path(name)

    ours = [temp_of(t) for t in ("tiny.safetensors", "tiny-000003.safetensors", "tiny_loss.csv", "tiny_loss.png")]
    others = [temp_of(t) for t in ("other.safetensors", "tiny_other.safetensors")]
    user_file = tmp_path / ".tiny.safetensors.notes.tmp"
    user_file.write_text("mine", encoding="utf-8")
    train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 1})))
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others) and user_file.exists()


def test_a_full_disk_at_the_loss_plot_is_the_clear_disk_error(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    import matplotlib.figure

    from engine.config.job import parse_config
    from engine.training.guards import DiskFullError
    from engine.training.loop import train

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(DiskFullError, match="the disk filled up while saving the loss plot"):
        train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 1})))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_at_the_loss_csv(tmp_path):
    from engine.training.callbacks import StepInfo
    from engine.training.curves import CurveWriter
    from engine.training.guards import DiskFullError

    writer = CurveWriter(tmp_path, "x", plot_every=0)
    writer.on_start(10)
    (tmp_path / "x_loss.csv").unlink()
    (tmp_path / "x_loss.csv").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(DiskFullError, match="the loss curve"):
        writer.on_step(StepInfo(1, 10, 1, 0.5, 1e-4))


# ---------------------------------------------------------------- one heavy job at a time

def test_one_job_at_a_time_even_when_two_start_together():
    from engine.training.callbacks import TrainResult
    from engine.training.jobs import JobBusy, JobRunner

    release = threading.Event()

    def slow_train(cfg, callbacks, stop, **kwargs):
        release.wait(10)
        return TrainResult(final_path=None)

    runner = JobRunner(train_fn=slow_train)
    outcomes, barrier = [], threading.Barrier(8)

    def press_start():
        barrier.wait()
        try:
            runner.start(None)
            outcomes.append("started")
        except JobBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=press_start) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(outcomes) == ["busy"] * 7 + ["started"]
    with pytest.raises(JobBusy) as err:  # the grid waits for training ...
        with runner.exclusive("grid"):
            pass
    assert err.value.work == "training"
    release.set()
    runner.wait(10)
    with runner.exclusive("grid"):  # ... and training waits for the grid
        with pytest.raises(JobBusy) as err:
            runner.start(None)
        assert err.value.work == "grid"
    runner.start(None)  # free again
    runner.wait(10)


def test_grid_settings_share_the_sample_limits(tmp_path, trained_lora, tiny_model_dir, capsys):
    from engine.generate.grid import GridError, GridJob
    from launcher import main

    for bad in ({"width": 0}, {"height": -64}, {"cfg_scale": float("nan")}, {"steps": 0}, {"seeds": [2**70]},
                {"width": 100}):
        with pytest.raises(GridError):
            GridJob(checkpoints=[], prompts=["x"], **bad)
    lora = trained_lora[1].final_path
    assert main(["grid", "--base", str(tiny_model_dir), "--checkpoints", str(lora), "--prompt", "x",
                 "--size", "0", "--out", str(tmp_path)]) == 2
    assert "width must be between 64 and 4096" in capsys.readouterr().err
