"""The background job runner: a stop request ends the run cleanly and keeps what was learned."""
from __future__ import annotations

from conftest import lora_job
from safetensors import safe_open

from engine.config.job import parse_config
from engine.training.callbacks import Callbacks
from engine.training.jobs import JobRunner


def test_stop_saves_final_file_and_reports_stopped(tmp_path, tiny_model_dir, tiny_dataset):
    runner = JobRunner()

    class StopAfterTwo(Callbacks):
        def on_step(self, info):
            if info.step == 2:
                runner.stop()

    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 5}))
    runner.start(cfg, StopAfterTwo())
    state = runner.wait(timeout=300)
    assert state.status == "stopped", state.log
    assert state.step == 2 and len(state.losses) == 2
    final = tmp_path / "tiny-stopped-step000002.safetensors"  # named as stopped: never the finished result
    assert state.saved == [str(final)] and not (tmp_path / "tiny.safetensors").exists()
    with safe_open(str(final), "pt") as f:
        assert f.metadata()["ss_steps"] == "2"


def test_failure_is_reported_not_raised(tmp_path, tiny_dataset):
    runner = JobRunner()
    cfg = parse_config(lora_job(tmp_path / "no-model", tiny_dataset, tmp_path))
    runner.start(cfg)
    state = runner.wait(timeout=120)
    assert state.status == "failed" and state.error
