"""Run one training job at a time in a background thread and keep its state for any viewer.

Why here and not in the web app: the UI only reads snapshots; closing the browser does not
touch the job, and the same runner can back the CLI, tests and the wizard.
"""
from __future__ import annotations

import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from engine.config.job import JobConfig
from engine.training.callbacks import CallbackList, Callbacks, StepInfo, StopToken, TrainResult


class JobBusy(RuntimeError):
    """A job is already running; only one fits on one GPU. ``work`` says which: "training" or
    "grid"."""

    def __init__(self, message: str, work: str = "training") -> None:
        super().__init__(message)
        self.work = work


@dataclass
class JobState:
    status: str = "idle"  # idle | running | done | stopped | failed
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out images' loss)
    log: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    error: str = ""
    exception: BaseException | None = None  # the error itself, for a message in the page's language
    started_at: float = 0.0
    finished_at: float = 0.0
    run_dir: str = ""          # the job's output folder (the wizard: one per run)
    resumed_from_step: int = 0  # steps done before this start (0: a fresh run)

    @property
    def steps_per_second(self) -> float | None:
        """Speed of this start (a resumed run's earlier steps do not count)."""
        done = self.step - self.resumed_from_step
        end = self.finished_at or time.time()
        return done / (end - self.started_at) if done > 0 and end > self.started_at else None

    @property
    def eta_seconds(self) -> float | None:
        speed = self.steps_per_second
        if self.status != "running" or not speed:
            return None
        return (self.total_steps - self.step) / speed


class _Recorder(Callbacks):
    def __init__(self, runner: "JobRunner") -> None:
        self.runner = runner

    def on_log(self, message: str) -> None:
        self.runner._update(lambda s: s.log.append(message))

    def on_start(self, total_steps: int) -> None:
        self.runner._update(lambda s: setattr(s, "total_steps", total_steps))

    def on_resume(self, step: int, losses: list[float]) -> None:
        def apply(s: JobState) -> None:
            s.step, s.resumed_from_step, s.losses = step, step, list(losses)
            s.started_at = time.time()  # the speed and ETA count from here
        self.runner._update(apply)

    def on_step(self, info: StepInfo) -> None:
        def apply(s: JobState) -> None:
            s.step, s.epoch = info.step, info.epoch
            s.losses.append(info.loss)
            s.log.append(f"step {info.step}/{info.total_steps}, epoch {info.epoch}: loss {info.loss:.5f}, "
                         f"lr {info.lr:.3e}")
        self.runner._update(apply)

    def on_validation(self, step: int, epoch: int, loss: float) -> None:
        self.runner._update(lambda s: (s.validation.append((step, loss)),
                                       s.log.append(f"validation loss at step {step}: {loss:.5f}")))

    def on_saved(self, path: Path, epoch: int, step: int) -> None:
        self.runner._update(lambda s: (s.saved.append(str(path)), s.log.append(f"saved {path}")))

    def on_sample(self, paths: list[Path], epoch: int, step: int) -> None:
        self.runner._update(lambda s: s.samples.extend(str(p) for p in paths))


class JobRunner:
    def __init__(self, train_fn: Callable[..., TrainResult] | None = None) -> None:
        if train_fn is None:
            from engine.training.loop import train as train_fn
        self._train = train_fn
        self._lock = threading.Lock()
        self._state = JobState()
        self._stop: StopToken | None = None
        self._thread: threading.Thread | None = None
        self._busy: str | None = None  # "training" or "grid" while one runs (set under the lock)

    def _update(self, fn: Callable[[JobState], object]) -> None:
        with self._lock:
            fn(self._state)

    def snapshot(self) -> JobState:
        with self._lock:
            s = self._state
            return replace(s, losses=list(s.losses), validation=list(s.validation), log=list(s.log),
                           saved=list(s.saved), samples=list(s.samples))

    @property
    def running(self) -> bool:
        """A training job runs (or is starting)."""
        return self._busy == "training"

    @property
    def busy(self) -> str | None:
        """What holds the machine now: "training", "grid" or None."""
        return self._busy

    def _claim(self, work: str) -> None:
        """Check and take the machine in one locked step (two clicks at once start one job)."""
        with self._lock:
            if self._busy is not None:
                raise JobBusy(f"a {self._busy} job is already running; stop it or wait for it to finish",
                              self._busy)
            self._busy = work

    def _release(self) -> None:
        with self._lock:
            self._busy = None

    @contextmanager
    def exclusive(self, work: str = "grid") -> Iterator[None]:
        """Hold the machine for other heavy work (the comparison grid): training cannot start
        meanwhile, and this raises JobBusy while training runs."""
        self._claim(work)
        try:
            yield
        finally:
            self._release()

    def start(self, cfg: JobConfig, extra: Callbacks | None = None, resume: str | None = None) -> None:
        """Train ``cfg`` in the background; ``resume``: a state folder or "auto" (newest)."""
        self._claim("training")
        with self._lock:
            before = self._state
            self._state = JobState(status="running", started_at=time.time(),
                                   run_dir=str(getattr(getattr(cfg, "output", None), "dir", "")))
            if resume and before.run_dir == self._state.run_dir:  # continuing: keep what it made
                self._state.saved, self._state.samples = list(before.saved), list(before.samples)
            self._stop = StopToken()
            stop = self._stop
        callbacks = CallbackList(_Recorder(self), extra)
        self._thread = threading.Thread(target=self._run, args=(cfg, callbacks, stop, resume),
                                        name="loraforge-train", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def _run(self, cfg: JobConfig, callbacks: Callbacks, stop: StopToken, resume: str | None) -> None:
        try:
            result = (self._train(cfg, callbacks, stop, resume=resume) if resume
                      else self._train(cfg, callbacks, stop))
            status = "stopped" if result.stopped_early else "done"
            self._update(lambda s: (setattr(s, "status", status), s.log.append(f"{status}: "
                                    f"{result.steps} steps, final file {result.final_path}")))
        except Exception as err:  # surfaced to the user, never swallowed
            detail, failure = f"{type(err).__name__}: {err}", err
            traceback.print_exc()  # for a bug report: on the server's terminal, not in the page
            self._update(lambda s: (setattr(s, "status", "failed"), setattr(s, "error", detail),
                                    setattr(s, "exception", failure), s.log.append(detail)))
        finally:
            self._update(lambda s: setattr(s, "finished_at", time.time()))
            self._release()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.stop()

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()
