"""The portable bundle end to end: build the Linux zip (app + launchers + wheelhouse), unzip it
into an empty folder, and run its launcher with the network and pip's own configuration cut
off: it must install from the wheelhouse, pass `doctor`, start quickly the second time and train
a LoRA headless on the embedded model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from safetensors.torch import load_file


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "LORAFORGE_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(PIP_CONFIG_FILE=os.devnull,  # no local package index from this machine's pip config
               PIP_INDEX_URL="http://127.0.0.1:9/simple",  # and any index lookup would fail
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               HF_HUB_OFFLINE="1", LORAFORGE_CACHE=str(tmp_path / "cache"),
               PYTHON=shutil.which("python3") or sys.executable)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(1200)
def test_bundle_installs_offline_and_trains(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, str(ROOT / "portable" / "build_bundle.py"), "--out", str(dist)],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    bundle = dist / "loraforge-linux-cpu.zip"
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        mode = zf.getinfo("LoRAForge/portable/launcher.sh").external_attr >> 16
    for needed in ("launcher.py", "launcher.sh", "launcher.bat", "portable/launcher.sh",
                   "portable/launcher.bat", "portable/setup_env.sh", "requirements.txt",
                   "engine/training/loop.py", "webapp/server.py", "presets/base/shapes-base/unet/config.json",
                   "presets/demo/zkz_star/10_zkz/zkz_00.png", "wheelhouse/TORCH_VARIANT"):
        assert f"LoRAForge/{needed}" in names, needed
    assert any(n.startswith("LoRAForge/wheelhouse/torch-") and "+cpu" in n for n in names)
    assert not any(part in n for n in names for part in ("/tests/", "/.venv/", "__pycache__", "/.git/"))
    assert mode & 0o111, "launchers must stay executable"

    home = tmp_path / "user"  # an empty folder, as after downloading the zip
    home.mkdir()
    shutil.unpack_archive(bundle, home)
    app = home / "LoRAForge"
    env = offline_env(tmp_path)

    first = run(["bash", str(app / "launcher.sh"), "doctor"], env, home, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "from the bundled wheelhouse (offline, torch cpu" in first.stdout
    assert "torch 2.13.0+cpu cpu" in first.stdout and "Preset tier:   cpu" in first.stdout
    assert (app / ".venv" / "bin" / "python").is_file()

    start = time.monotonic()
    second = run(["bash", str(app / "launcher.sh"), "doctor"], env, home)
    assert second.returncode == 0 and "installing" not in second.stdout
    assert time.monotonic() - start < 60, "a second start must not reinstall anything"

    job = tmp_path / "job.toml"
    job.write_text(f"""
[model]
base = "embedded"
[dataset]
path = "{(app / 'presets' / 'demo' / 'zkz_star').as_posix()}"
resolution = 64
[network]
dim = 2
alpha = 1.0
[training]
max_steps = 2
batch_size = 2
[output]
dir = "{(tmp_path / 'out').as_posix()}"
name = "bundle_lora"
""", encoding="utf-8")
    trained = run(["bash", str(app / "launcher.sh"), "train", "--config", str(job)], env, home)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    lora = load_file(str(tmp_path / "out" / "bundle_lora.safetensors"))
    assert any(k.startswith("lora_unet_") for k in lora) and any(k.startswith("lora_te_") for k in lora)


def test_setup_says_when_python_is_missing(tmp_path):
    env = offline_env(tmp_path)
    env["PYTHON"] = str(tmp_path / "no-python-here")
    env["LORAFORGE_VENV"] = str(tmp_path / "venv")
    result = run(["bash", str(ROOT / "portable" / "setup_env.sh")], env, tmp_path)
    assert result.returncode == 1
    assert "LoRA Forge needs Python 3.11 or newer" in result.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("smi, override, expected", [
    ("exit 0", None, "cuda"),  # nvidia-smi lists a GPU
    ("exit 9", None, "cpu"),   # nvidia-smi present but no usable driver/GPU
    (None, None, "cpu"),       # no NVIDIA tools at all
    ("exit 0", "cpu", "cpu"),  # the user's choice wins
])
def test_torch_build_follows_nvidia_smi(tmp_path, smi, override, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{smi}\n")
        fake.chmod(0o755)
    env = offline_env(tmp_path)
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    env["PYTHON"] = sys.executable  # a real interpreter, not a shim that needs the full PATH
    if override:
        env["LORAFORGE_TORCH"] = override
    result = run(["bash", str(ROOT / "portable" / "setup_env.sh"), "--print-torch-variant"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
