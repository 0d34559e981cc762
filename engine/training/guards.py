"""Guards that stop a run with a clear message instead of wasting hours or losing files: a loss
that turned NaN/inf, a disk that cannot hold the next save, and CUDA running out of memory at
the start of a tier-sized job (retried once with the next smaller tier).
"""
from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from engine.i18n import Explained

_MB = 1 << 20


class TrainingDiverged(Explained, RuntimeError):
    """The loss stopped being a finite number; nothing after that point is worth saving."""


class DiskFullError(Explained, RuntimeError):
    pass


def check_loss(value: float, step: int, epoch: int, last_good: Path | None, precision: str) -> None:
    if math.isfinite(value):
        return
    kept = (f"The last good file is kept: {last_good}" if last_good else
            "No file was saved before this point.")
    fixes = ["lower the learning rate (e.g. halve it)"]
    if precision == "fp16":
        fixes.append("train in bf16 or fp32 instead of fp16 (fp16 overflows; an fp16-fixed VAE helps too)")
    fixes.append("check the dataset for broken or blank images")
    raise TrainingDiverged(f"the loss became {value} at step {step} (epoch {epoch}); training "
                           f"stopped and nothing after it was saved. {kept}. Usual fixes: "
                           + "; ".join(fixes) + ".",
                           "diverged_fp16" if precision == "fp16" else "diverged", value=value,
                           step=step, epoch=epoch, kept=last_good or "-")


def check_finite(tensors: list[torch.Tensor], what: str, step: int, epoch: int, last_good: Path | None) -> None:
    """Refuse to save weights that hold NaN/inf. The loss of the last step can still be finite
    while its optimizer step (an absurd learning rate or alpha) breaks the weights; such a file
    would draw noise or black images, so it is never written."""
    if all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
        return
    kept = f"The last good file is kept: {last_good}" if last_good else "No file was saved before this point."
    raise TrainingDiverged(f"the trained weights became NaN or infinite by step {step} (epoch {epoch}); "
                           f"{what} was not saved. {kept}. Usual fixes: lower the learning rate, "
                           "check network.alpha, train in bf16 or fp32.", "diverged_weights", step=step,
                           epoch=epoch, what=what, kept=last_good or "-")


def disk_full(err: OSError, folder: Path, what: str) -> DiskFullError | None:
    """The clear error for a disk (or quota) that filled up while writing ``what``, else None."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"the disk filled up while saving {what} in {folder} ({err.strerror}); "
                             "the file was not written and earlier files are kept. Free some "
                             "space and resume.", "disk_full", folder=folder, what=what)
    return None


def bytes_needed(tensors: list[torch.Tensor], bytes_per_value: int) -> int:
    return sum(t.numel() for t in tensors) * bytes_per_value


def ensure_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start a save that cannot fit (with a margin), before a byte is written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    want = int(needed * 1.1) + 16 * _MB
    if free < want:
        raise DiskFullError(f"not enough free disk space in {folder} to save {what}: about "
                            f"{want / _MB:.0f} MB needed, {free / _MB:.0f} MB free. Free some space "
                            "(or set output.dir to another disk); files saved so far are kept.",
                            "disk_space", folder=folder, what=what, need=f"{want / _MB:.0f}",
                            free=f"{free / _MB:.0f}")


def guarded_save(save: Callable[[], Any], folder: Path, needed: int, what: str) -> Any:
    """Check the space, then save; a disk that fills up anyway becomes the same clear error
    (the atomic writers have already removed their temporary file)."""
    ensure_free_space(folder, needed, what)
    try:
        return save()
    except OSError as err:
        full = disk_full(err, folder, what)
        if full is not None:
            raise full from None
        raise


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())
