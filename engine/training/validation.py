"""Validation loss: the training loss on images the training never sees, with fixed noise and
fixed timesteps, so one number is comparable across epochs and across runs of the same job.

The training loss is noisy (a new noise draw and timestep every step) and only ever goes down as
a network memorises its images; the validation loss goes down while the network learns what the
images share and back up once it copies the training images themselves, which is what a user
wants to see to pick an epoch. Everything here draws from its own seeded generator, so turning
validation on does not change a single random number of the training itself.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config.job import JobConfig
from engine.data.dataset import BucketOptions, TrainingSamples
from engine.data.folder import DatasetIndex, ImageItem, Subset
from engine.models.loader import LoadedModel
from engine.training.conditioning import unet_conditioning
from engine.training.losses import diffusion_loss

NUM_TIMESTEPS = 4  # per image: spread evenly over the job's timestep range


@dataclass
class ValidationSet:
    latents: list[torch.Tensor]   # per image [1, C, h, w], on the CPU
    captions: list[str]
    time_ids: list[torch.Tensor]  # per image [1, 6] (SDXL's size conditioning; unused otherwise)
    noise: list[torch.Tensor]     # per image [NUM_TIMESTEPS, C, h, w]
    timesteps: torch.Tensor       # [NUM_TIMESTEPS]
    seed: int

    def __len__(self) -> int:
        return len(self.latents)


def validation_seed(cfg: JobConfig) -> int:
    return cfg.training.seed if cfg.dataset.validation_seed is None else cfg.dataset.validation_seed


@torch.no_grad()
def build_validation_set(cfg: JobConfig, model: LoadedModel, items: list[ImageItem], encode,
                         buckets: BucketOptions | None, objective) -> ValidationSet:
    """Encode each validation image once (at its training size: the training images' ``buckets``)
    and draw its fixed noise."""
    d = cfg.dataset
    root = Path(items[0].path).parent
    samples = TrainingSamples(DatasetIndex(root, [Subset("validation", root, 1, list(items))]), d.resolution,
                              buckets=buckets)
    seed = validation_seed(cfg)
    generator = torch.Generator().manual_seed(seed)
    latents, time_ids, noise = [], [], []
    for i in range(len(items)):
        lat = encode(samples.pixels(i).unsqueeze(0)).float().cpu()
        latents.append(lat)
        time_ids.append(samples.size_conditioning(i).unsqueeze(0))
        noise.append(torch.randn((NUM_TIMESTEPS, *lat.shape[1:]), generator=generator))
    timesteps = objective.fixed_timesteps(NUM_TIMESTEPS)
    return ValidationSet(latents, [it.caption for it in items], time_ids, noise, timesteps, seed)


@torch.no_grad()
def validation_loss(vset: ValidationSet, s, cfg: JobConfig, unet, text_encoders: list, device: torch.device,
                    autocast) -> float:
    """The mean loss over the validation images and fixed timesteps, the job's loss type without
    per-timestep weights (so runs with different weightings stay comparable)."""
    t = cfg.training
    objective = s.objective
    rng = random.Random(vset.seed)  # a method's prompt (a TI template) is drawn the same way each time
    timesteps = vset.timesteps.to(device)
    threshold = (objective.huber(timesteps, t.huber_schedule, t.huber_c, t.huber_scale)
                 if t.loss_type in ("huber", "smooth_l1") else None)
    total = 0.0
    for lat, caption, size, noise in zip(vset.latents, vset.captions, vset.time_ids, vset.noise):
        latents = lat.to(device, s.weight_dtype).expand(len(timesteps), *lat.shape[1:])
        noise = noise.to(device, s.weight_dtype)
        noisy = objective.noisy(latents, noise, timesteps)
        prompts = [s.method.prompt(s, caption, rng)] * len(timesteps)
        batch = {"time_ids": size.expand(len(timesteps), -1)}
        cache = s.te_cache if s.te_cache is not None and s.te_cache.has(prompts[0]) else None
        with autocast():
            hidden, added = unet_conditioning(s.model, text_encoders, prompts, batch, t.clip_skip, False, cache,
                                              device, s.weight_dtype)

            def encode(other: list[str]) -> torch.Tensor:
                return unet_conditioning(s.model, text_encoders, other, batch, t.clip_skip, False, None, device,
                                         s.weight_dtype)[0]

            pred = s.method.predict(s, cfg, unet, noisy, timesteps, hidden, added, encode)
        target = objective.target(latents, noise, timesteps)
        total += float(diffusion_loss(pred, target, None, t.loss_type, threshold))
    return total / max(len(vset), 1)
