"""The headless CLI on the same engine: train from a TOML, clear errors, doctor."""
from __future__ import annotations

import subprocess
import sys

import tomli_w
from conftest import ROOT, lora_job
from safetensors.torch import load_file


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "launcher.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_train_from_toml_with_progress(tmp_path, tiny_model_dir, tiny_dataset):
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out",
                   training={"epochs": 1, "max_steps": 2, "batch_size": 2})
    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(job))
    proc = run_cli("train", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "step 1/2" in proc.stdout and "step 2/2" in proc.stdout and "loss" in proc.stdout
    assert "2/2" in proc.stderr  # tqdm bar
    assert load_file(str(tmp_path / "out" / "tiny.safetensors"))


def test_bad_config_exits_2_with_field_name(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[model]\nbase = "x"\n[dataset]\npath = "d"\nresolution = 500\n')
    proc = run_cli("train", "--config", str(path))
    assert proc.returncode == 2 and "dataset.resolution" in proc.stderr
    proc = run_cli("train", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_missing_model_is_a_clear_error(tmp_path, tiny_dataset):
    job = {"model": {"base": str(tmp_path / "nowhere.safetensors")},
           "dataset": {"path": str(tiny_dataset), "resolution": 64}}
    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(job))
    proc = run_cli("train", "--config", str(path))
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_a_tier():
    proc = run_cli("doctor")
    assert proc.returncode == 0 and "tier" in proc.stdout.lower()
