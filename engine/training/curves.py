"""Loss and learning-rate curves written while training: a CSV row per step and a PNG redrawn
every few steps, because people would rather look at a curve than read numbers."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from engine.fileio import atomic_write
from engine.training.callbacks import Callbacks, StepInfo, TrainResult


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (what TensorBoard's smoothing slider shows)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def plot_curves(steps: list[int], losses: list[float], lrs: list[float], path: Path,
                validation: list[tuple[int, float]] | None = None) -> Path:
    """Loss (raw and smoothed) over the learning rate; the validation loss, when measured, as a
    second line with its lowest point marked (the epoch to look at first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(3, 1))
    ax1.plot(steps, losses, color="#bbbbbb", linewidth=0.8, label="loss")
    ax1.plot(steps, smooth(losses), color="#d62728", linewidth=1.6, label="smoothed")
    if validation:
        vs, vl = zip(*validation)
        ax1.plot(vs, vl, color="#2ca02c", marker="o", markersize=3, linewidth=1.4, label="validation")
        low = min(range(len(vl)), key=vl.__getitem__)
        ax1.plot([vs[low]], [vl[low]], marker="*", markersize=12, color="#2ca02c", linestyle="none")
    ax1.set_ylabel("loss")
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    ax2.plot(steps, lrs, color="#1f77b4")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return Path(path)


class CurveWriter(Callbacks):
    """Writes ``<dir>/<name>_loss.csv`` every step and ``<dir>/<name>_loss.png`` every
    ``plot_every`` steps (but not more often than every ``min_seconds``: a plot costs a quarter
    of a second, more than a step of a small model) and at the end; the validation loss, when
    measured, to ``<dir>/<name>_validation.csv`` and into the same plot."""

    def __init__(self, out_dir: Path, name: str, plot_every: int = 10, min_seconds: float = 0.0) -> None:
        self.csv = Path(out_dir) / f"{name}_loss.csv"
        self.png = Path(out_dir) / f"{name}_loss.png"
        self.validation_csv = Path(out_dir) / f"{name}_validation.csv"
        self.validation: list[tuple[int, float]] = []
        self.plot_every = plot_every
        self.min_seconds = min_seconds
        self._plotted = float("-inf")  # time.monotonic() of the last plot
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.resume_step: int | None = None  # set by the trainer when resuming

    def on_start(self, total_steps: int) -> None:
        """A fresh CSV, or, when ``resume_step`` is set, the interrupted run's rows up to it
        (later rows are steps that will be trained again)."""
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.resume_step is not None and self.csv.is_file():
            for line in self.csv.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
                try:
                    step, _, loss, lr = line.split(",")
                    row = int(step), float(loss), float(lr)
                except ValueError:  # a line cut short by a crash
                    continue
                if row[0] <= self.resume_step:
                    rows.append(line + "\n")
                    self.steps.append(row[0])
                    self.losses.append(row[1])
                    self.lrs.append(row[2])
        with self._disk("the loss curve"):
            atomic_write(self.csv, lambda tmp: tmp.write_text("step,epoch,loss,lr\n" + "".join(rows),
                                                              encoding="utf-8"))
        self._start_validation()

    def _start_validation(self) -> None:
        """Keep a resumed run's validation rows up to the resume step; a fresh run has none."""
        rows = []
        if self.resume_step is not None and self.validation_csv.is_file():
            for line in self.validation_csv.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
                try:
                    step, _, loss = line.split(",")
                    row = int(step), float(loss)
                except ValueError:
                    continue
                if row[0] <= self.resume_step:
                    rows.append(line + "\n")
                    self.validation.append(row)
        if rows:
            with self._disk("the validation curve"):
                atomic_write(self.validation_csv, lambda tmp: tmp.write_text(
                    "step,epoch,validation_loss\n" + "".join(rows), encoding="utf-8"))
        elif self.validation_csv.is_file():  # an earlier run's, under the same name
            self.validation_csv.unlink()

    def on_validation(self, step: int, epoch: int, loss: float) -> None:
        self.validation.append((step, loss))
        with self._disk("the validation curve"):
            new = not self.validation_csv.is_file()
            with open(self.validation_csv, "a", encoding="utf-8") as fh:
                fh.write(("step,epoch,validation_loss\n" if new else "") + f"{step},{epoch},{loss:.6f}\n")

    def on_step(self, info: StepInfo) -> None:
        self.steps.append(info.step)
        self.losses.append(info.loss)
        self.lrs.append(info.lr)
        with self._disk("the loss curve"):
            with open(self.csv, "a", encoding="utf-8") as fh:
                fh.write(f"{info.step},{info.epoch},{info.loss:.6f},{info.lr:.6e}\n")
            if (self.plot_every and info.step % self.plot_every == 0
                    and time.monotonic() - self._plotted >= self.min_seconds):
                plot_curves(self.steps, self.losses, self.lrs, self.png, self.validation)
                self._plotted = time.monotonic()

    def on_end(self, result: TrainResult) -> None:
        if self.steps:
            with self._disk("the loss plot"):
                plot_curves(self.steps, self.losses, self.lrs, self.png, self.validation)

    @contextmanager
    def _disk(self, what: str) -> Iterator[None]:
        """A full disk while writing the curve is the same clear error as during a model save."""
        from engine.training.guards import disk_full

        try:
            yield
        except OSError as err:
            full = disk_full(err, self.csv.parent, what)
            if full is not None:
                raise full from None
            raise
