"""Guards with injected faults: a NaN loss, a full disk (before and during a save) and CUDA
running out of memory at the start of a tier-sized job."""
from __future__ import annotations

import errno
from collections import namedtuple

import pytest
import torch
from conftest import lora_job
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.training.callbacks import Callbacks
from engine.training.guards import DiskFullError, TrainingDiverged
from engine.training.loop import train
from engine.training.setup import SetupError


def test_nan_loss_stops_and_keeps_the_last_good_file(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch,
                                                     capsys):
    import engine.training.loop as trainer

    calls = {"n": 0}
    real = trainer.diffusion_loss

    def nan_at_step_8(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", nan_at_step_8)
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2})
    with pytest.raises(TrainingDiverged) as err:
        train(parse_config(job))
    message = str(err.value)
    assert "the loss became nan at step 8 (epoch 2)" in message
    assert f"The last good file is kept: {tmp_path / 'tiny-000001.safetensors'}" in message
    assert "lower the learning rate" in message
    assert not (tmp_path / "tiny.safetensors").exists()  # nothing after the NaN was saved
    kept = load_file(str(tmp_path / "tiny-000001.safetensors"))
    assert all(torch.isfinite(v).all() for v in kept.values())

    # the command line says the same and exits with 1
    import tomli_w

    from launcher import main

    calls["n"] = 0
    (tmp_path / "job.toml").write_text(tomli_w.dumps(job))
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "job.toml"), "--print-every", "0"]) == 1
    assert "the loss became nan at step 8" in capsys.readouterr().err


def test_no_space_for_a_save_is_a_clear_error(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    import engine.training.guards as guards

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(guards.shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(DiskFullError, match=r"not enough free disk space in .* to save epoch 1: about "
                                            r"\d+ MB needed, 1 MB free"):
        train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2})))
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tmp"))


def test_disk_filling_up_during_a_save(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    import engine.export.safetensors_io as io

    def half_written_then_full(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "save_file", half_written_then_full)
    with pytest.raises(DiskFullError, match="the disk filled up while saving epoch 1"):
        train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2})))
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".tmp")]
    assert leftovers == []  # no half file under the real name, no temporary file


class Log(Callbacks):
    def __init__(self):
        self.lines = []

    def on_log(self, message):
        self.lines.append(message)


def oom_when(monkeypatch, fails):
    """An allocator failure injected into the UNet forward, the first place a real one happens."""
    from diffusers import UNet2DConditionModel

    real = UNet2DConditionModel.forward
    calls = {"n": 0}

    def forward(self, sample, *args, **kwargs):
        calls["n"] += 1
        if fails(sample, calls["n"]):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)


def user_job(tiny_model_dir, tiny_dataset, out):
    job = lora_job(tiny_model_dir, tiny_dataset, out, training={"epochs": 1},
                   optimizer={"type": "AdamW", "lr": 2e-3})
    job["training"].pop("batch_size")  # left to the tier
    job["training"]["mixed_precision"] = "no"
    return job


def test_out_of_memory_at_start_steps_down_one_tier(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    from engine.training.tier_fallback import next_lower_tier, train_with_tier_fallback

    assert next_lower_tier("8gb") == "6gb" and next_lower_tier("4gb") is None
    oom_when(monkeypatch, lambda sample, n: sample.shape[0] > 1)  # batch 2 does not fit, batch 1 does
    log = Log()
    result = train_with_tier_fallback(user_job(tiny_model_dir, tiny_dataset, tmp_path), "8gb", log)
    assert ("out of GPU memory at the start with tier 8gb; retrying once with the next smaller "
            "tier, 6gb") in log.lines
    assert result.steps == 12  # 6gb's batch size 1: 12 images x repeats per epoch
    assert (tmp_path / "tiny.safetensors").is_file()


def test_out_of_memory_later_or_at_the_smallest_tier_is_not_retried(tmp_path, tiny_model_dir, tiny_dataset,
                                                                    monkeypatch):
    from engine.training.tier_fallback import train_with_tier_fallback

    oom_when(monkeypatch, lambda sample, n: n >= 3)
    with pytest.raises(SetupError, match="ran out of GPU memory at step 3"):
        train_with_tier_fallback(user_job(tiny_model_dir, tiny_dataset, tmp_path), "8gb", Log())
    oom_when(monkeypatch, lambda sample, n: True)
    with pytest.raises(SetupError, match=r"even with the smallest tier \(4gb\)"):
        train_with_tier_fallback(user_job(tiny_model_dir, tiny_dataset, tmp_path), "4gb", Log())
