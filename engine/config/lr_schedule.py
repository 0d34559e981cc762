"""A1111's learning-rate schedule syntax (``0.005:100, 1e-3:1000, 1e-5``), used by Textual
Inversion and hypernetwork jobs. Torch-free: the job schema checks it while validating."""
from __future__ import annotations

import re

from engine.i18n import Explained

_LR_ITEM = re.compile(r"^\s*([0-9.eE+-]+)\s*(?::\s*(\d+)\s*)?$")


class LrScheduleError(Explained, ValueError):
    pass


def parse_lr_schedule(text: str) -> list[tuple[float, int | None]]:
    """A1111 syntax ``0.005:100, 1e-3:1000, 1e-5``: lr 0.005 until step 100, 1e-3 until 1000,
    then 1e-5. Only the last item may omit its step; steps must increase."""
    items = []
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise LrScheduleError("empty learning-rate schedule", "lr_schedule_empty")
    last_step = 0
    for i, part in enumerate(parts):
        m = _LR_ITEM.match(part)
        if not m:
            raise LrScheduleError(f"cannot read {part.strip()!r}: write rate:step, e.g. 0.005:100",
                                  "lr_schedule_item", item=part.strip())
        try:
            lr = float(m.group(1))
        except ValueError:
            raise LrScheduleError(f"{m.group(1)!r} is not a number", "lr_schedule_number",
                                  value=m.group(1)) from None
        step = int(m.group(2)) if m.group(2) else None
        if lr <= 0:
            raise LrScheduleError(f"learning rate must be > 0 (got {lr:g})", "lr_schedule_positive", value=f"{lr:g}")
        if step is None and i != len(parts) - 1:
            raise LrScheduleError(f"only the last item may leave out its step (item {i + 1})", "lr_schedule_last",
                                  item=i + 1)
        if step is not None and step <= last_step:
            raise LrScheduleError(f"steps must increase (got {step} after {last_step})", "lr_schedule_increase",
                                  step=step, last=last_step)
        last_step = step or last_step
        items.append((lr, step))
    return items


def lr_at(schedule: list[tuple[float, int | None]], step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the first step is step 0)."""
    for lr, end in schedule:
        if end is None or step < end:
            return lr
    return schedule[-1][0]

