"""Resumable training state: what an interrupted run needs to continue exactly as if it had
never stopped (trainable tensors, optimizer, LR scheduler, every random generator, the position
in the epoch and the loss history).

Why crash-safe: a state is written into a hidden temporary folder, flushed, then renamed into
place, and only then does ``latest`` point at it. A process killed at any moment (SIGKILL, power
loss) leaves the previous state complete and loadable; half-written folders are ignored and
cleaned up by the next save. Everything loads with safetensors or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.config.job import JobConfig
from engine.fileio import atomic_write_bytes
from engine.i18n import Explained

STATE_FORMAT = 1
_TMP_PREFIX = ".tmp-"


class StateError(Explained, RuntimeError):
    pass


def state_root(cfg: JobConfig) -> Path:
    return Path(cfg.output.dir) / f"{cfg.output.name}-state"


def job_fingerprint(cfg: JobConfig) -> str:
    """What must not change between a run and its resumption (not output/sample settings): the
    values that differ from the defaults, so a new option (at its default) does not make a state
    saved before it existed unresumable; the method's type always counts."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    keep = {k: data.get(k, {}) for k in ("model", "dataset", "network", "optimizer", "scheduler", "training")}
    keep["network"] = {**keep["network"], "type": cfg.network.type}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Position:
    step: int             # optimizer steps done
    epoch: int            # the epoch to continue in
    skip_batches: int     # batches of that epoch already trained
    sampler_state: torch.Tensor  # the batch sampler's generator at that epoch's start


@dataclass
class TrainState:
    path: Path
    position: Position
    trainable: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    losses: list[float]
    meta: dict[str, Any]
    passed_over: list["StateError"] = field(default_factory=list)  # damaged newer states skipped
    ema: dict[str, Any] | None = None  # the weights' moving average (engine.training.ema), if the job keeps one


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: Path, write) -> None:
    write(path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def rng_snapshot(caption_rng: random.Random) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "caption": caption_rng.getstate(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state(root: Path, fingerprint: str, position: Position, trainable: list[torch.Tensor],
               optimizer, scheduler, caption_rng: random.Random, losses: list[float],
               keep: int = 2, pause_for_tests: float = 0.0, ema: dict[str, Any] | None = None) -> Path:
    """Write ``root/step-<n>/`` crash-safely and point ``root/latest`` at it; keep ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{position.step:08d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    tensors = {f"p{i:05d}": t.detach().to("cpu").contiguous() for i, t in enumerate(trainable)}
    _write(tmp / "trainable.safetensors", lambda p: save_file(tensors, str(p)))
    if pause_for_tests:
        time.sleep(pause_for_tests)  # lets the crash test kill us with the state half written
    blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_snapshot(caption_rng), "sampler_state": position.sampler_state}
    if ema is not None:
        blob["ema"] = ema
    _write(tmp / "state.pt", lambda p: torch.save(blob, p))
    meta = {"format": STATE_FORMAT, "fingerprint": fingerprint, "step": position.step,
            "epoch": position.epoch, "skip_batches": position.skip_batches,
            "num_trainable": len(tensors), "losses": losses, "saved_at": time.time()}
    _write(tmp / "meta.json", lambda p: p.write_text(json.dumps(meta), encoding="utf-8"))
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. stopped right after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / "latest", final.name.encode())
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[:-keep]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f"{_TMP_PREFIX}*"):  # left by a run killed while saving (ours is renamed)
        shutil.rmtree(stale, ignore_errors=True)


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in ("trainable.safetensors", "state.pt", "meta.json"))


_STATE_NAME = re.compile(r"^step-\d{8}$")


def _named_latest(root: Path) -> Path | None:
    """The folder ``root/latest`` names, if it is one of this folder's state names (a pointer
    edited to aim elsewhere, ``../x`` or an absolute path, is ignored)."""
    try:
        name = (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return root / name if _STATE_NAME.match(name) else None


def state_candidates(root: Path) -> list[Path]:
    """The complete states in ``root``, the one to try first first: ``latest`` (unless a newer
    complete folder exists: ``latest`` may be older than a folder renamed just before a crash),
    then the others, newest first."""
    root = Path(root)
    found = sorted((p for p in root.glob("step-*") if p.is_dir() and _STATE_NAME.match(p.name) and _complete(p)),
                   reverse=True)
    named = _named_latest(root)
    if named is not None and named in found and named.name >= found[0].name:
        found.remove(named)
        found.insert(0, named)
    return found


def find_latest(root: Path) -> Path | None:
    """The state a resume starts from (see :func:`state_candidates`); None if there is none."""
    candidates = state_candidates(root)
    return candidates[0] if candidates else None


def load_state(path: Path, fingerprint: str) -> TrainState:
    """One saved state. A damaged one (cut-off tensors, garbage JSON, a zero-byte file, a .pt
    that carries code) is a StateError naming the folder and the file, never a traceback."""
    path = Path(path)
    if not _complete(path):
        raise StateError(f"{path}: not a complete training state", "state_incomplete", path=path)

    def damaged(part: str, err: BaseException) -> StateError:
        detail = f"{type(err).__name__}: {str(err)[:200]}"
        return StateError(f"{path}: the saved training state is damaged ({part}: {detail})", "state_damaged",
                          path=path, part=part, error=detail)

    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        step, epoch, skip, count = (int(meta[k]) for k in ("step", "epoch", "skip_batches", "num_trainable"))
        losses = [float(v) for v in meta["losses"]]
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise damaged("meta.json", err) from None
    if meta.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: state format {meta.get('format')} is not supported", "state_format", path=path)
    if meta.get("fingerprint") != fingerprint:
        raise StateError(f"{path} was saved by a different job (model, dataset, network, optimizer, "
                         "scheduler or training settings changed); resume with the job that made it",
                         "state_other_job", path=path)
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        trainable = [tensors[f"p{i:05d}"] for i in range(count)]
    except Exception as err:  # safetensors raises its own error types for a cut-off file
        raise damaged("trainable.safetensors", err) from None
    try:
        blob = torch.load(str(path / "state.pt"), map_location="cpu", weights_only=True)
        parts = blob["optimizer"], blob["scheduler"], blob["rng"], blob["sampler_state"]
    except Exception as err:  # UnpicklingError (code inside), EOFError, a zip cut short, ...
        raise damaged("state.pt", err) from None
    position = Position(step, epoch, skip, parts[3])
    return TrainState(path, position, trainable, parts[0], parts[1], parts[2], losses, meta, ema=blob.get("ema"))


def load_newest_good(root: Path, fingerprint: str) -> tuple[TrainState, list[StateError]]:
    """The newest state of ``root`` that loads, and the damaged newer ones it passed over (the
    caller says so). A state of another job is not passed over: that is the wrong job, not
    damage. No loadable state: a StateError that lists what was wrong with each."""
    damaged: list[StateError] = []
    for path in state_candidates(root):
        try:
            return load_state(path, fingerprint), damaged
        except StateError as err:
            if err.key != "state_damaged":
                raise
            damaged.append(err)
    if damaged:
        raise StateError(f"no usable training state in {root}: " + "; ".join(str(e) for e in damaged),
                         "state_all_damaged", path=root, count=len(damaged), error=damaged[0])
    raise StateError(f"no complete training state in {root}", "state_incomplete", path=root)


def restore(state: TrainState, trainable: list[torch.Tensor], optimizer, scheduler,
            caption_rng: random.Random) -> None:
    """Put the saved values into the live objects of a freshly built job."""
    if len(trainable) != len(state.trainable):
        raise StateError(f"{state.path}: {len(state.trainable)} trainable tensors saved, the job has "
                         f"{len(trainable)}", "state_mismatch", path=state.path)
    with torch.no_grad():
        for live, saved in zip(trainable, state.trainable):
            if live.shape != saved.shape:
                raise StateError(f"{state.path}: a saved tensor has shape {tuple(saved.shape)}, the "
                                 f"job's has {tuple(live.shape)}", "state_mismatch", path=state.path)
            live.copy_(saved.to(live.device, live.dtype))
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    caption_rng.setstate(_as_rng_state(state.rng["caption"]))
    random.setstate(_as_rng_state(state.rng["python"]))


def restore_torch_rng(state: TrainState) -> None:
    """The global torch generators, set separately from the rest: when depends on where the
    state was saved relative to the epoch's data iterator, which draws a seed from the global
    RNG when it is created (see the trainer)."""
    torch.set_rng_state(state.rng["torch"])
    if "cuda" in state.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.rng["cuda"])


def _as_rng_state(value) -> tuple:
    """random.getstate() is (version, tuple of ints, gauss); torch.save/load may turn the inner
    tuple into a list."""
    version, internal, gauss = value
    return version, tuple(internal), gauss
