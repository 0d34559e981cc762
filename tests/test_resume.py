"""Resumable training: a run killed with SIGKILL (also in the middle of writing its state) and
resumed, possibly several times, ends with the same LoRA and the same loss curve as a run that
was never interrupted."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import ROOT, lora_job, stop_at
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.training.loop import train
from engine.training.state import StateError, find_latest, job_fingerprint, load_state, state_root

# flips and caption shuffling on: every random source of a step has to come back exactly
OVERRIDES = dict(training={"epochs": 2, "batch_size": 2},
                 dataset={"flip_aug": True, "shuffle_caption": True},
                 output={"save_state_every_n_steps": 1, "keep_states": 2})


def job(model_dir, data, out):
    return lora_job(model_dir, data, out, **OVERRIDES)


def csv_losses(path: Path) -> list[str]:
    return [line.split(",")[2] for line in path.read_text().splitlines()[1:]]


def launch(config: Path, resume: bool, pause: float) -> subprocess.Popen:
    env = {**os.environ, "LORAFORGE_TEST_STATE_PAUSE": str(pause)}
    cmd = [sys.executable, str(ROOT / "launcher.py"), "train", "--config", str(config), "--print-every", "0"]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.timeout(600)
def test_sigkill_at_random_points_then_resume_gives_the_same_lora(tmp_path, tiny_model_dir, tiny_dataset):
    reference = train(parse_config(job(tiny_model_dir, tiny_dataset, tmp_path / "ref")))
    cfg = parse_config(job(tiny_model_dir, tiny_dataset, tmp_path / "crash"))
    config = tmp_path / "crash.toml"
    config.write_text(tomli_w.dumps(job(tiny_model_dir, tiny_dataset, tmp_path / "crash")))
    root = state_root(cfg)
    rng = random.Random(7)
    kills = []

    # 1) killed while writing a state (the save pauses half-way so the kill lands inside it)
    proc = launch(config, resume=False, pause=0.5)
    mid_save = lambda: any(p.name.startswith(".tmp-") for p in root.glob("*")) and find_latest(root)  # noqa
    assert wait_for(mid_save, proc), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append("mid-save")
    half = [p for p in root.glob(".tmp-*")]
    assert half and not (half[0] / "meta.json").exists()  # really interrupted inside the save
    survivor = find_latest(root)
    state = load_state(survivor, job_fingerprint(cfg))  # the previous state is complete
    assert state.position.step >= 1

    # 2) killed at a random moment of the next run, which resumed from the newest state
    for _ in range(1):
        proc = launch(config, resume=True, pause=0.05)
        before = find_latest(root)
        assert wait_for(lambda: find_latest(root) != before, proc)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(f"after step {load_state(find_latest(root), job_fingerprint(cfg)).position.step}")

    # 3) the last run finishes
    proc = launch(config, resume=True, pause=0.0)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out and len(kills) >= 2, kills
    ours = load_file(str(tmp_path / "crash" / "tiny.safetensors"))
    theirs = load_file(str(reference.final_path))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed LoRA differs"
    assert csv_losses(tmp_path / "crash" / "tiny_loss.csv") == csv_losses(tmp_path / "ref" / "tiny_loss.csv")
    assert not list(root.glob(".tmp-*")), "half-written states are cleaned up"
    assert len(list(root.glob("step-*"))) <= 2  # keep_states


def test_stop_saves_a_state_and_resume_refuses_a_changed_job(tmp_path, tiny_model_dir, tiny_dataset):
    data = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2},
                    output={"save_state": True})
    token, stop_at_3 = stop_at(3)
    stopped = train(parse_config(data), stop_at_3, token)
    assert stopped.stopped_early and stopped.steps == 3
    latest = find_latest(state_root(parse_config(data)))
    assert latest is not None and latest.name == "step-00000003"
    # the state files load without unpickling code
    torch.load(latest / "state.pt", weights_only=True)
    changed = parse_config({**data, "optimizer": {**data["optimizer"], "lr": 0.5}})
    with pytest.raises(StateError, match="saved by a different job"):
        train(changed, resume="auto")
    resumed = train(parse_config(data), resume="auto")
    assert resumed.steps == 12 and resumed.losses[:3] == stopped.losses
    other = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "empty"))
    with pytest.raises(StateError, match="no saved training state"):
        train(other, resume="auto")


def test_sampler_flips_and_replays_an_interrupted_epoch():
    from engine.data.dataset import BucketBatchSampler

    keys = [(64, 64)] * 6 + [(64, 128)] * 4
    a = BucketBatchSampler(keys, 2, seed=3, flip=True)
    epochs = [list(a) for _ in range(3)]
    flat = [i for e in epochs for b in e for i in b]
    assert any(i >= len(keys) for i in flat) and any(i < len(keys) for i in flat)  # mirrored = +10
    assert all(sorted(i % len(keys) for b in e for i in b) == list(range(10)) for e in epochs)
    b = BucketBatchSampler(keys, 2, seed=3, flip=True)
    list(b)
    interrupted = iter(b)  # the second epoch gets interrupted after 2 batches...
    assert [next(interrupted), next(interrupted)] == epochs[1][:2]
    b.resume(b.epoch_start_state, 2)
    assert list(b) == epochs[1][2:]  # ...replays from its third batch
    assert list(b) == epochs[2]  # and the following epoch is the unbroken run's


def test_resume_from_an_epoch_end_state_is_exact(tmp_path, tiny_model_dir, tiny_dataset):
    """`save_state = true` saves with each epoch file, i.e. before the next epoch's data iterator
    draws its seed; resuming from it must replay that draw (it once restored the RNG after it,
    which made the resumed run drift by ~0.014)."""
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path,
                                training={"epochs": 2, "batch_size": 2, "seed": 1},
                                output={"save_state": True}))
    final = train(cfg).final_path
    unbroken = load_file(final)
    final.unlink()
    state = find_latest(state_root(cfg))
    assert load_state(state, job_fingerprint(cfg)).position.skip_batches == 0  # an epoch-end state
    resumed = load_file(train(cfg, resume="auto").final_path)
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_the_resume_fingerprint_counts_changed_settings_not_new_defaults(tiny_model_dir, tiny_dataset, tmp_path):
    """A setting at its default counts as absent, so a state saved before an option existed still
    resumes; a changed setting, or another method with the same numbers, does not."""
    plain = lora_job(tiny_model_dir, tiny_dataset, tmp_path)
    fp = job_fingerprint(parse_config(plain))
    spelled_out = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"loss_type": "l2", "min_timestep": 0})
    assert job_fingerprint(parse_config(spelled_out)) == fp
    huber = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"loss_type": "huber"})
    assert job_fingerprint(parse_config(huber)) != fp
    locon = lora_job(tiny_model_dir, tiny_dataset, tmp_path, network={"type": "locon", "dim": 4, "alpha": 2.0})
    assert job_fingerprint(parse_config(locon)) != fp
    assert job_fingerprint(parse_config({**plain, "output": {**plain["output"], "name": "other"}})) == fp
