"""Out of GPU memory at the start of a tier-sized job: step down to the next smaller tier once,
say so, and train with that (what a user would do by hand after the crash)."""
from __future__ import annotations

from typing import Any, Callable

from engine.training.callbacks import Callbacks, StepInfo, TrainResult
from engine.training.guards import is_out_of_memory
from engine.training.setup import SetupError

SMALLEST_GPU_TIER = "4gb"


def next_lower_tier(name: str) -> str | None:
    from engine.config.tiers import list_tiers

    tiers = [t for t in list_tiers() if t != "cpu"]  # the cpu tier is not a smaller GPU setup
    if name not in tiers or tiers.index(name) == 0:
        return None
    return tiers[tiers.index(name) - 1]


class _StepSeen(Callbacks):
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, info: StepInfo) -> None:
        self.steps = info.step


def train_with_tier_fallback(user_job: dict[str, Any], tier: Any, callbacks: Callbacks | None = None,
                             train_fn: Callable[..., TrainResult] | None = None, **train_kwargs
                             ) -> TrainResult:
    """``user_job`` (the user's own values) over ``tier`` (a name or hardware TierChoice)."""
    from engine.config.job import parse_config
    from engine.config.tiers import apply_tier
    from engine.training.callbacks import CallbackList

    if train_fn is None:
        from engine.training.loop import train as train_fn
    name = getattr(tier, "name", tier)
    seen = _StepSeen()
    try:
        return train_fn(parse_config(apply_tier({}, tier, user_job)), CallbackList(seen, callbacks),
                        **train_kwargs)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        if seen.steps > 0:
            raise SetupError(f"ran out of GPU memory at step {seen.steps + 1} ({err}); lower "
                             "training.batch_size or dataset.resolution, or turn on "
                             "training.gradient_checkpointing", "oom_step", step=seen.steps + 1) from None
        lower = next_lower_tier(name)
        if lower is None:
            raise SetupError(f"out of GPU memory even with the smallest tier ({name}): {err}. Lower "
                             "dataset.resolution or close other programs using the GPU", "oom_smallest",
                             tier=name) from None
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    message = (f"out of GPU memory at the start with tier {name}; retrying once with the next "
               f"smaller tier, {lower}")
    if callbacks is not None:
        callbacks.on_log(message)
    return train_fn(parse_config(apply_tier({}, lower, user_job)), callbacks, **train_kwargs)
