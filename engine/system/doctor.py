"""``launcher.py doctor``: a plain-text report of what this machine can train with.

Each line is computed on its own and any failure becomes text on that line, so the report
always prints, even with missing or broken packages.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from engine.system.hardware import HardwareInfo, TierChoice, pick_tier, probe

PACKAGES: tuple[str, ...] = ("bitsandbytes", "xformers", "diffusers", "transformers", "peft",
                             "accelerate", "gradio")
_WIDTH = 14


def package_status(name: str, try_import: bool = True) -> str:
    """Installed version, "missing", or the version plus why importing it fails."""
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    except Exception:  # noqa: BLE001 - broken metadata
        version = None
    if not try_import:
        return version or "missing"
    sink = io.StringIO()
    try:  # some packages print banners or warnings on import; keep the report clean
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except ImportError:
        return f"{version} (installed, but import failed)" if version else "missing"
    except Exception as err:  # noqa: BLE001 - e.g. a CUDA library mismatch at import time
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        return f"{version or 'present'} (import failed: {first})"
    return version or str(getattr(module, "__version__", "installed (version unknown)"))


def _torch_line(info: HardwareInfo) -> str:
    if info.torch_build == "missing":
        return "missing (pip install torch)"
    build = {"cuda": f"CUDA {info.torch_cuda_version} build",
             "rocm": f"ROCm {info.torch_cuda_version} build",
             "cpu": "CPU-only build"}[info.torch_build]
    return f"{info.torch_version} ({build})"


def _gpu_line(info: HardwareInfo) -> str:
    if not info.gpu_name:
        return "none found (training runs on the CPU)"
    vram = f", {info.vram_gib:.1f} GiB VRAM" if info.vram_gib is not None else ""
    count = f", {info.gpu_count} GPUs" if info.gpu_count > 1 else ""
    return f"{info.gpu_name}{vram}{count} (found by {info.source}, backend {info.backend})"


def _bf16_line(info: HardwareInfo) -> str:
    if info.backend != "cuda":
        return f"n/a on {info.backend}"
    cap = (f" (compute capability {info.compute_capability[0]}.{info.compute_capability[1]})"
           if info.compute_capability else "")
    return ("supported" if info.bf16_supported else "not supported, fp16 will be used") + cap


def _disk_line(path: Path) -> str:
    usage = shutil.disk_usage(path)
    return f"{usage.free / 1024 ** 3:.1f} GiB free in {path}"


def _tier_optimizer(choice: TierChoice) -> Optional[str]:
    from engine.config.tiers import deep_merge, load_tier

    delta = deep_merge(load_tier(choice.name), choice.overrides)
    return delta.get("optimizer", {}).get("type")


def _safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the report must always print
        return f"unknown ({type(err).__name__}: {err})"


def doctor_report(info: Optional[HardwareInfo] = None, *, packages: Sequence[str] = PACKAGES,
                  try_import: bool = True, cwd: Optional[Path] = None) -> str:
    """The doctor report as text; ``info`` defaults to a live ``hardware.probe()``."""
    notes: list[str] = []
    if info is None:
        try:
            info = probe()
        except Exception as err:  # noqa: BLE001
            info = HardwareInfo(notes=[f"hardware probe failed: {err}"])
    notes.extend(info.notes)
    choice: Optional[TierChoice] = None
    try:
        choice = pick_tier(info)
    except Exception as err:  # noqa: BLE001
        notes.append(f"could not choose a tier: {err}")

    lines = ["LoRA Forge doctor", ""]

    def row(label: str, value: str) -> None:
        lines.append(f"{label + ':':<{_WIDTH}} {value}")

    row("Python", _safe(lambda: f"{platform.python_version()} ({sys.executable})"))
    row("OS", _safe(lambda: f"{platform.system()} {platform.release()} ({platform.machine()})"))
    row("PyTorch", _safe(lambda: _torch_line(info)))
    row("GPU", _safe(lambda: _gpu_line(info)))
    row("bf16", _safe(lambda: _bf16_line(info)))
    if choice is not None:
        row("Preset tier", choice.name)
        row("Why", choice.reason)
    statuses = {}
    lines.append("Packages:")
    for name in packages:
        statuses[name] = _safe(lambda: package_status(name, try_import))
        lines.append(f"  {name:<{_WIDTH - 2}} {statuses[name]}")
    row("Disk", _safe(lambda: _disk_line(Path(cwd or os.getcwd()).resolve())))

    if choice is not None and "bitsandbytes" in statuses:
        optimizer = _safe(lambda: _tier_optimizer(choice) or "AdamW")
        bnb = statuses["bitsandbytes"]
        if optimizer == "AdamW8bit" and (bnb == "missing" or "failed" in bnb):
            notes.append(f"tier {choice.name} uses AdamW8bit, which needs bitsandbytes: "
                         "pip install bitsandbytes, or set [optimizer] type = \"AdamW\"")
    if notes:
        lines.append("Notes:")
        lines.extend(f"  - {note}" for note in notes)
    return "\n".join(lines)


def job_report(job_file: Path, tier: Optional[str] = None, info: Optional[HardwareInfo] = None) -> str:
    """``doctor --job``: the job's predicted GPU memory peak (engine.system.vram), against this
    machine's GPU when it has one. ``tier`` layers a preset tier under the job, as ``train --tier`` does."""
    from engine.config.job import parse_config, read_toml_file
    from engine.config.tiers import apply_tier
    from engine.system.vram import PRECISION_LABEL, predict_vram, verdict

    info = info if info is not None else probe()
    data = read_toml_file(job_file)
    if tier:
        data = apply_tier({}, pick_tier(info) if tier == "auto" else tier, data)
    cfg = parse_config(data)
    prediction = predict_vram(cfg)
    vram = info.vram_gib if info.backend == "cuda" else None
    lines = [f"Job: {job_file}" + (f" (tier {tier})" if tier else ""),
             f"  {prediction.line(vram)}: {verdict(prediction, vram)}",
             f"  architecture {prediction.architecture} ({prediction.family}), batch {cfg.training.batch_size}, "
             f"{cfg.dataset.resolution} px, {PRECISION_LABEL[cfg.training.mixed_precision]}, gradient checkpointing "
             f"{'on' if cfg.training.gradient_checkpointing else 'off'}, optimizer {cfg.optimizer.type}",
             "  not counted: " + "; ".join(prediction.left_out + tuple(prediction.notes))]
    return "\n".join(lines)
