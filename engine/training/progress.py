"""Terminal progress for headless runs: a tqdm bar plus one loss line per step."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from engine.training.callbacks import Callbacks, StepInfo, TrainResult


class TqdmProgress(Callbacks):
    def __init__(self, print_every: int = 1) -> None:
        self.bar: tqdm | None = None
        self.print_every = print_every

    def on_log(self, message: str) -> None:
        (self.bar.write if self.bar else print)(message)

    def on_start(self, total_steps: int) -> None:
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    def on_step(self, info: StepInfo) -> None:
        assert self.bar is not None
        self.bar.update(1)
        self.bar.set_postfix(epoch=info.epoch, loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}")
        if self.print_every and info.step % self.print_every == 0:
            self.bar.write(f"step {info.step}/{info.total_steps} epoch {info.epoch} "
                           f"loss {info.loss:.5f} lr {info.lr:.3e}")

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self.on_log(f"epoch {epoch} done, mean loss {mean_loss:.5f}")

    def on_saved(self, path: Path, epoch: int, step: int) -> None:
        self.on_log(f"saved {path}")

    def on_end(self, result: TrainResult) -> None:
        if self.bar:
            self.bar.close()
