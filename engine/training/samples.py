"""Sample images during training from the model as it is right now.

Sampling must not change training: it runs on a forked RNG, in eval mode, without gradients,
and puts the modules back into train mode afterwards.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config.job import JobConfig
from engine.generate.prompts import a1111_parameters, parse_prompt_line, save_png_with_parameters
from engine.generate.sampler import SampleSpec, build_pipeline, generate
from engine.models.loader import LoadedModel


def sample_specs(cfg: JobConfig) -> list[SampleSpec]:
    res = cfg.dataset.resolution
    defaults = SampleSpec("", seed=cfg.sample.seed, steps=cfg.sample.steps,
                          cfg_scale=cfg.sample.cfg_scale, width=res, height=res)
    return [parse_prompt_line(line, defaults) for line in cfg.sample.prompts]


def should_sample(cfg: JobConfig, epoch: int = 0, step: int = 0) -> bool:
    """At an epoch end pass ``epoch``; after an optimizer step pass ``step``."""
    n, count = ((cfg.sample.every_n_epochs, epoch) if epoch else (cfg.sample.every_n_steps, step))
    return bool(cfg.sample.prompts) and n > 0 and count > 0 and count % n == 0


def sample_during_training(cfg: JobConfig, model: LoadedModel, unet, text_encoders: list, epoch: int,
                           step: int, autocast=None) -> list[Path]:
    """Textual Inversion needs nothing special here: the diffusers pipeline itself rewrites a
    multi-vector token (``name`` -> ``name name_1 ...``), so prompts go in as the user typed them
    (rewriting them first would make the pipeline rewrite them again, into nonsense)."""
    out_dir = Path(cfg.output.dir) / "sample"
    was_training = [unet.training] + [te.training for te in text_encoders]
    for module in (unet, *text_encoders):
        module.eval()
    paths = []
    try:
        pipe = build_pipeline(model, unet=unet, text_encoders=text_encoders, scheduler=cfg.sample.sampler)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), (autocast or _null)():
            for i, spec in enumerate(sample_specs(cfg)):
                image = generate(pipe, spec)[0]
                text = a1111_parameters(spec, cfg.sample.sampler, model_name=model.name)
                path = out_dir / f"{cfg.output.name}_e{epoch:06d}_s{step:06d}_{i:02d}.png"
                paths.append(save_png_with_parameters(image, path, text))
    finally:
        for module, mode in zip((unet, *text_encoders), was_training):
            module.train(mode)
    return paths


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
