"""Training runs on disk: one folder per run, ``<parent>/<name>-<date>-<time>/``, so a second run
never overwrites the files of the first, and the list of runs survives a page reload or an app
restart (it is read from the folders, not kept in memory).

A run folder holds what the trainer writes: ``<name>_job.toml`` (the job as it ran), epoch files
``<name>-000001.*``, the final ``<name>.*`` or, for a run stopped early,
``<name>-stopped-step000061.*``, the resumable state ``<name>-state/``, the loss curve and samples.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.config.job import JOB_SUFFIX

MODEL_SUFFIXES = (".safetensors", ".pt")  # LoRA/LyCORIS/TI/DreamBooth, hypernetwork
_STAMP = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")


@dataclass
class RunRecord:
    folder: Path
    name: str                  # output.name
    job: Path                  # the job as it ran
    files: list[Path]          # epoch files in order, then the final or the stopped file
    status: Literal["done", "stopped", "incomplete"]  # incomplete: running, crashed or killed
    resumable: bool            # a saved training state exists
    started: float             # seconds since the epoch


def new_run_folder(parent: Path, name: str, now: float | None = None) -> Path:
    """A fresh folder for a new run of ``name`` (created, never an existing one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    base = Path(parent) / f"{name}-{stamp}"
    folder, k = base, 1
    while True:
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            k += 1
            folder = base.with_name(f"{base.name}-{k}")


def run_files(folder: Path, name: str) -> tuple[list[Path], Literal["done", "stopped", "incomplete"]]:
    """(model files of the run in training order, status). An epoch or final file saved in two
    forms (Textual Inversion: .safetensors and A1111's .pt) counts once, as .safetensors."""
    def one(stems: list[str]) -> list[Path]:
        out = []
        for stem in stems:
            found = [folder / f"{stem}{suffix}" for suffix in MODEL_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
            out += found[:1]
        return out

    names = {p.stem for p in folder.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file()}
    epochs = sorted(n for n in names if re.fullmatch(rf"{re.escape(name)}-\d{{6}}", n))
    stopped = sorted(n for n in names if re.fullmatch(rf"{re.escape(name)}-stopped-step\d{{6}}", n))
    final = one([name])
    if final:
        return one(epochs) + final, "done"
    if stopped:
        return one(epochs) + one(stopped[-1:]), "stopped"
    return one(epochs), "incomplete"


def read_run(folder: Path) -> RunRecord | None:
    """The run in ``folder``, or None if it holds no job file of ours."""
    from engine.training.state import find_latest

    jobs = sorted(Path(folder).glob(f"*{JOB_SUFFIX}"))
    if not jobs:
        return None
    job = jobs[0]
    name = job.name[: -len(JOB_SUFFIX)]
    files, status = run_files(Path(folder), name)
    match = _STAMP.search(Path(folder).name)
    started = (time.mktime(time.strptime(match.group(1), "%Y%m%d-%H%M%S")) if match
               else job.stat().st_mtime)
    resumable = status != "done" and find_latest(Path(folder) / f"{name}-state") is not None
    return RunRecord(Path(folder), name, job, files, status, resumable, started)


def list_runs(parent: Path) -> list[RunRecord]:
    """Every run folder directly inside ``parent``, newest first."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    runs = [r for p in parent.iterdir() if p.is_dir() and (r := read_run(p)) is not None]
    return sorted(runs, key=lambda r: (r.started, r.folder.name), reverse=True)
