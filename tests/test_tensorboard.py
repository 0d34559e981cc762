"""Optional TensorBoard logging: the event files hold the same losses the run reports."""
from __future__ import annotations

import builtins

import pytest
from conftest import lora_job

from engine.config.job import parse_config
from engine.training.loop import train
from engine.training.setup import SetupError


def test_losses_lr_and_samples_reach_tensorboard(tiny_model_dir, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out",
                   training={"epochs": 2}, output={"log_with": "tensorboard",
                                                   "logging_dir": str(tmp_path / "tb")},
                   sample={"prompts": ["zkz star --s 2"], "every_n_epochs": 1})
    result = train(parse_config(job))
    runs = list((tmp_path / "tb").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny_")
    events = EventAccumulator(str(runs[0]), size_guidance={"images": 0, "scalars": 0}).Reload()
    losses = [e.value for e in events.Scalars("loss/step")]
    assert [e.step for e in events.Scalars("loss/step")] == list(range(1, result.steps + 1))
    assert losses == pytest.approx(result.losses, rel=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([2e-3] * result.steps)
    assert len(events.Scalars("loss/epoch")) == 2
    images = events.Images("sample/0")
    assert [im.step for im in images] == [6, 12] and images[0].width == 64


def test_missing_tensorboard_is_a_clear_setup_error(tiny_model_dir, tiny_dataset, tmp_path,
                                                    monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, output={"log_with": "tensorboard"})
    with pytest.raises(SetupError, match="pip install tensorboard"):
        train(parse_config(job))
    assert not (tmp_path / "logs").exists()
