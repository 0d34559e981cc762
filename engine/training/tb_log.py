"""Optional TensorBoard logging (``output.log_with = "tensorboard"``): loss, learning rate and the
sample images, for users who watch runs in TensorBoard as kohya_ss and A1111 let them.

tensorboard is an optional install (``pip install tensorboard``); the loss CSV/PNG are always
written. Each run logs into its own ``<logging_dir>/<name>_<date-time>`` folder, as kohya does.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.i18n import Explained
from engine.training.callbacks import Callbacks, StepInfo, TrainResult


class TensorBoardUnavailable(Explained, RuntimeError):
    pass


def run_log_dir(logging_dir: Path, name: str, now: float | None = None) -> Path:
    return Path(logging_dir) / f"{name}_{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


class TensorBoardLogger(Callbacks):
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TensorBoardUnavailable(
                "output.log_with = 'tensorboard' needs the tensorboard package: "
                "pip install tensorboard (or set log_with = 'none'; the loss CSV/PNG are written "
                "either way)", "tensorboard_missing") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def on_step(self, info: StepInfo) -> None:
        self.writer.add_scalar("loss/step", info.loss, info.step)
        self.writer.add_scalar("lr", info.lr, info.step)

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self.writer.add_scalar("loss/epoch", mean_loss, epoch)
        self.writer.flush()

    def on_sample(self, paths: list[Path], epoch: int, step: int) -> None:
        for i, path in enumerate(paths):
            pixels = np.asarray(Image.open(path).convert("RGB"))
            self.writer.add_image(f"sample/{i}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def on_end(self, result: TrainResult) -> None:
        self.writer.close()
