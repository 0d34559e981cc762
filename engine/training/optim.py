"""Optimizer and learning-rate schedule from the config, using the libraries that own them."""
from __future__ import annotations

from typing import Iterable

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
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=wd)
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
                 up_params: Iterable = (), ratios: tuple[float, float] = (1.0, 1.0)) -> list[dict]:
    """One group per part (UNet, text encoder) at its learning rate; with LoRA+ (``ratios`` above
    1) each part's up matrices (``up_params``) get a group of their own at lr x ratio."""
    groups = []
    up = {id(p) for p in up_params}
    for params, lr, ratio in ((list(unet_params), cfg.unet_lr or cfg.lr, ratios[0]),
                              (list(te_params), cfg.text_encoder_lr or cfg.lr, ratios[1])):
        faster = [p for p in params if id(p) in up] if ratio != 1.0 else []
        rest = [p for p in params if id(p) not in up] if faster else params
        if rest:
            groups.append({"params": rest, "lr": lr})
        if faster:
            groups.append({"params": faster, "lr": lr * ratio})
    return groups
