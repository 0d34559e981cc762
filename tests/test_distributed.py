"""Data-parallel training: the same job under ``accelerate launch --num_processes 2`` (two CPU
processes, gloo) trains the same LoRA as one process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import lora_job
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_sampler_shards_are_the_single_process_batches():
    """Rank 0's rows then rank 1's rows of each global batch = one process's batch of 2x size,
    in the same order; a short batch is padded with its own first entries."""
    from engine.data.dataset import BucketBatchSampler

    keys = [(64, 64)] * 7 + [(32, 96)] * 3   # two buckets: 7 and 3 entries
    single = list(BucketBatchSampler(keys, 4, seed=5, flip=True))
    ranks = [BucketBatchSampler(keys, 2, seed=5, flip=True, num_processes=2, rank=r) for r in (0, 1)]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == len(ranks[0])
    for whole, b0, b1 in zip(single, *per_rank):
        assert len(b0) == len(b1) == -(-len(whole) // 2)
        padded = whole + whole[:len(b0) * 2 - len(whole)]
        assert b0 + b1 == padded
    assert any(len(w) % 2 for w in single)  # the padding case was exercised


def _launch_two(job_file: Path, cwd: Path, *extra: str) -> str:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "launcher.py"), "train", "--config", str(job_file), *extra],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """One unbroken run on 2 processes (with states, for the resume test): 4 images x 3 repeats
    = 12 per epoch, 6 global batches of 2, so every batch is full."""
    folder = tmp_path_factory.mktemp("distributed")
    job = lora_job(tiny_model_dir, tiny_dataset, folder / "multi",
                   training={"epochs": 2, "batch_size": 1, "seed": 1}, output={"save_state": True})
    job_file = folder / "multi.toml"
    job_file.write_text(tomli_w.dumps(job))
    log = _launch_two(job_file, folder)
    return folder, job_file, log, load_file(folder / "multi" / "tiny.safetensors")


def test_two_process_run_equals_one_process_with_the_same_global_batch(two_process_run, tmp_path, tiny_model_dir,
                                                                         tiny_dataset):
    from engine.config.job import parse_config
    from engine.training.loop import train

    folder, _, log, multi = two_process_run
    assert "2 processes: trained weights identical on every process" in log
    assert log.count("done: 12 steps") == 1  # 12 global steps; only the first process reports

    single_cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "single",
                                       training={"epochs": 2, "batch_size": 2, "seed": 1}))
    assert train(single_cfg).steps == 12
    single = load_file(tmp_path / "single" / "tiny.safetensors")
    diff = _max_diff(multi, single)
    assert diff < 1e-4, diff  # measured ~1.2e-5: float summation order only

    # control: the comparison can tell runs apart (batch 1 on one process = other updates)
    other_cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "other",
                                      training={"epochs": 1, "batch_size": 1, "seed": 1}))
    train(other_cfg)
    assert _max_diff(load_file(tmp_path / "other" / "tiny.safetensors"), single) > 100 * diff
    # the epoch file is written once, by the first process, and matches too
    epoch1 = folder / "multi" / "tiny-000001.safetensors"
    assert _max_diff(load_file(epoch1), load_file(tmp_path / "single" / "tiny-000001.safetensors")) < 1e-4


def test_two_process_run_resumes_to_the_same_lora(two_process_run):
    """Both processes restore the state process 0 saved after epoch 1 and finish epoch 2 with
    the weights of the unbroken run."""
    folder, job_file, _, unbroken = two_process_run
    final = folder / "multi" / "tiny.safetensors"
    final.unlink()
    log = _launch_two(job_file, folder, "--resume")
    assert "resumed from" in log and "(step 6, epoch 2" in log
    assert _max_diff(load_file(final), unbroken) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shard_rows_cover_the_padded_batch(n):
    from engine.data.shards import Shard, shard_of

    for length in range(1, 9):
        parts = [(p, Shard.of_process(len(p), r, n))
                 for r, p in enumerate(shard_of(length, n, r) for r in range(n))]
        rows = [i for p, _ in parts for i in p]
        assert sorted(set(rows)) == list(range(length))           # every entry trained
        assert len({len(p) for p, _ in parts}) == 1               # same count everywhere
        assert all(s.total == len(rows) for _, s in parts)
        noise = torch.arange(len(rows))
        assert torch.cat([s.rows(noise) for _, s in parts]).tolist() == list(range(len(rows)))
