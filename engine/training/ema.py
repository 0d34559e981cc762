"""Exponential moving average (EMA) of the trained weights, through diffusers' EMAModel.

Why: the weights after the last step carry that step's noise; their running average is smoother
and usually draws cleaner images, which is why full fine-tunes keep one. Training itself never
sees the average: it is swapped in only while a file is saved, samples are drawn or the
validation loss is measured, and swapped out again, so the trained weights (and a resumed run)
are exactly those of a run without it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def make_ema(params: list[torch.Tensor], decay: float):
    """An EMAModel over ``params`` (kept on their device). Its decay warms up as
    (1 + step) / (10 + step) up to ``decay``, so a short LoRA run is not stuck near its start."""
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay, foreach=True)


@contextmanager
def averaged(ema, params: list[torch.Tensor]) -> Iterator[None]:
    """``params`` hold the average inside the block, their own values again after it (also when
    the block fails). No EMA: nothing changes."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def restore_ema(ema, saved: dict, device: torch.device) -> None:
    """The EMA of a saved training state, back on the training device."""
    ema.load_state_dict(saved)
    ema.to(device=device)
