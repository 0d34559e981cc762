"""How the loop talks to the outside world (CLI progress bar, web UI, tests) without knowing it.

The loop calls these hooks and polls a StopToken; nothing here touches a UI toolkit, so the
same engine serves the CLI and the web app.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


class StopToken:
    """Thread-safe 'please stop' flag the loop checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()


@dataclass
class StepInfo:
    step: int            # optimizer steps done so far (1-based after the first step)
    total_steps: int
    epoch: int           # 1-based epoch being trained
    loss: float
    lr: float


@dataclass
class TrainResult:
    final_path: Path | None
    saved: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, int, float]] = field(default_factory=list)  # (step, epoch, loss)
    steps: int = 0
    epochs_done: int = 0
    stopped_early: bool = False


class Callbacks:
    """Override what you need; every hook is optional."""

    def on_log(self, message: str) -> None: ...
    def on_start(self, total_steps: int) -> None: ...
    def on_resume(self, step: int, losses: list[float]) -> None: ...  # continuing a saved state
    def on_step(self, info: StepInfo) -> None: ...
    def on_epoch_end(self, epoch: int, mean_loss: float) -> None: ...
    def on_validation(self, step: int, epoch: int, loss: float) -> None: ...  # held-out images' loss
    def on_saved(self, path: Path, epoch: int, step: int) -> None: ...
    def on_sample(self, paths: list[Path], epoch: int, step: int) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


class CallbackList(Callbacks):
    """Fans every hook out to several callbacks (e.g. progress bar + loss plot)."""

    def __init__(self, *callbacks: Callbacks | None) -> None:
        self.callbacks = [c for c in callbacks if c is not None]

    def _each(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_log(self, message: str) -> None: self._each("on_log", message)
    def on_start(self, total_steps: int) -> None: self._each("on_start", total_steps)
    def on_resume(self, step: int, losses: list[float]) -> None: self._each("on_resume", step, losses)
    def on_step(self, info: StepInfo) -> None: self._each("on_step", info)
    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self._each("on_epoch_end", epoch, mean_loss)
    def on_validation(self, step: int, epoch: int, loss: float) -> None:
        self._each("on_validation", step, epoch, loss)
    def on_saved(self, path: Path, epoch: int, step: int) -> None:
        self._each("on_saved", path, epoch, step)
    def on_sample(self, paths: list[Path], epoch: int, step: int) -> None:
        self._each("on_sample", paths, epoch, step)
    def on_end(self, result: TrainResult) -> None: self._each("on_end", result)
