"""Optimizer and learning-rate schedule from the config, using the libraries that own them."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from diffusers.optimization import get_scheduler

from engine.config.job import OptimizerConfig, SchedulerConfig
from engine.i18n import Explained


class OptimizerUnavailable(Explained, RuntimeError):
    pass


def build_optimizer(cfg: OptimizerConfig, param_groups: list[dict], device_type: str
                    ) -> torch.optim.Optimizer:
    wd = cfg.weight_decay
    if cfg.type == "AdamW":
        # one fused kernel per step instead of a dozen ops per tensor: the same update (within
        # float rounding), ~4x less optimizer time on the many small LoRA tensors (CPU and CUDA)
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=wd, fused=True)
    if cfg.type == "AdamW8bit":
        if device_type != "cuda":
            raise OptimizerUnavailable(
                "optimizer.type: AdamW8bit (bitsandbytes) needs an NVIDIA GPU; use AdamW on CPU", "optimizer_8bit_cpu")
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(param_groups, lr=cfg.lr, weight_decay=wd)
    if cfg.type == "Adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(param_groups, lr=cfg.lr, weight_decay=wd, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if cfg.type == "Lion":
        from lion_pytorch import Lion
        return Lion(param_groups, lr=cfg.lr, weight_decay=wd)
    if cfg.type == "Prodigy":
        from prodigyopt import Prodigy
        return Prodigy(param_groups, lr=cfg.lr, weight_decay=wd)
    raise OptimizerUnavailable(f"optimizer.type: unknown optimizer {cfg.type!r}", "optimizer_unknown", name=cfg.type)


def describe_optimizer(opt: torch.optim.Optimizer, cfg: OptimizerConfig) -> str:
    """kohya-style ``ss_optimizer`` value: class path plus the non-default arguments."""
    cls = type(opt)
    return f"{cls.__module__}.{cls.__name__}(weight_decay={cfg.weight_decay})"


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    num_processes: int = 1):
    return get_scheduler(
        cfg.type, optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps * num_processes,
        num_training_steps=total_steps * num_processes,
        num_cycles=cfg.num_cycles, power=cfg.power,
    )


def param_groups(unet_params: Iterable, te_params: Iterable, cfg: OptimizerConfig,
                 scale: Optional[dict[int, float]] = None) -> list[dict]:
    """One group per part (UNet, text encoder) at its learning rate, split further where
    ``scale`` (id(param) -> multiplier: LoRA+ ratios, block weights) gives some parameters
    another multiple of it."""
    groups = []
    scale = scale or {}
    for params, lr in ((list(unet_params), cfg.unet_lr or cfg.lr), (list(te_params), cfg.text_encoder_lr or cfg.lr)):
        by_multiplier: dict[float, list] = {}
        for p in params:
            by_multiplier.setdefault(scale.get(id(p), 1.0), []).append(p)
        groups += [{"params": ps, "lr": lr * m} for m, ps in by_multiplier.items()]
    return groups


def lr_multipliers(unet_params: Iterable, up_params: Iterable, ratios: tuple[float, float],
                   block_scale: dict[int, float]) -> dict[int, float]:
    """id(param) -> learning-rate multiplier: its block's weight x the LoRA+ ratio of its part
    for the up matrices (``ratios`` = (UNet, text encoder))."""
    unet = {id(p) for p in unet_params}
    scale = dict(block_scale)
    for p in up_params:
        ratio = ratios[0] if id(p) in unet else ratios[1]
        if ratio != 1.0:
            scale[id(p)] = scale.get(id(p), 1.0) * ratio
    return scale
