"""Pure loss helpers for diffusion fine-tuning (no state, easy to test)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def offset_noise(latents: torch.Tensor, offset: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian noise plus a per-channel constant shift (Guttenberg, "Diffusion with Offset
    Noise", 2023): lets the model learn very dark / very bright images."""
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype, device=latents.device)
    if offset > 0:
        shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                            dtype=latents.dtype, device=latents.device)
        noise = noise + offset * shift
    return noise


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction, SD2)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", 2023): caps the weight of easy low-noise timesteps."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor,
                   weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean-squared error in fp32, optionally weighted per sample."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale * (cond - uncond)``.
    DreamArtist trains through it, so the negative embedding learns to be a good "uncond"."""
    return uncond + scale * (cond - uncond)
