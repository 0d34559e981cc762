"""What the denoiser learns, per model family: noise prediction on a DDPM schedule (SD 1.x, 2.x,
XL) or rectified flow (Flux.1). The loop and the validation loss ask the objective for the
timesteps, the noisy input and the target, so they read the same for every family.

Rectified flow (Flux.1, as it was trained and as kohya trains its LoRAs): the input is
``(1 - s) * latents + s * noise`` for a sigma ``s`` in (0, 1), the target the velocity
``noise - latents``. Sigmas are drawn as ``sigmoid(N(0, 1))`` and shifted toward noise by
``shift * s / (1 + (shift - 1) * s)``; with ``flux_shift`` the shift follows the image's size as
at sampling (``exp(mu)``, mu from 0.5 at 256 packed tokens to 1.15 at 4096: 3.16 at 1024 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from engine.training.losses import (
    debiased_weights,
    huber_threshold,
    min_snr_weights,
    noisy_input,
    sample_timesteps,
    training_target,
)

# the resolution-dependent shift of Flux.1's scheduler (also what its pipeline samples with)
BASE_SEQ, MAX_SEQ, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def flux_mu(seq_len: int) -> float:
    """The log-shift for ``seq_len`` packed image tokens: a line through (256, 0.5), (4096, 1.15)."""
    m = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ - BASE_SEQ)
    return seq_len * m + BASE_SHIFT - m * BASE_SEQ


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """More of the training at high noise for shift > 1 (what large images need)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass
class DiffusionObjective:
    """Noise (epsilon) or velocity (v) prediction on the base's DDPM schedule."""
    scheduler: Any  # diffusers' DDPMScheduler
    prediction_type: str
    min_timestep: int = 0
    max_timestep: int = 1000

    def timesteps(self, n: int, latents: torch.Tensor) -> torch.Tensor:
        return sample_timesteps(n, self.min_timestep, self.max_timestep, self.scheduler, latents.device)

    def fixed_timesteps(self, count: int) -> torch.Tensor:
        """``count`` timesteps at the middles of equal parts of the job's range (validation)."""
        total = self.scheduler.config.num_train_timesteps
        high = min(self.max_timestep, total)
        low = min(self.min_timestep, high - 1)
        span = (high - low) / count
        return torch.tensor([int(low + (k + 0.5) * span) for k in range(count)], dtype=torch.long)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              ip_noise_gamma: float = 0.0, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        return noisy_input(self.scheduler, latents, noise, timesteps, ip_noise_gamma, extra)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return training_target(self.scheduler, latents, noise, timesteps, self.prediction_type)

    def weights(self, timesteps: torch.Tensor, min_snr_gamma: float, debiased: bool) -> torch.Tensor | None:
        w = None
        if min_snr_gamma:
            w = min_snr_weights(self.scheduler, timesteps, min_snr_gamma, self.prediction_type)
        if debiased:
            d = debiased_weights(self.scheduler, timesteps, self.prediction_type)
            w = d if w is None else w * d
        return w

    def huber(self, timesteps: torch.Tensor, schedule: str, c: float, scale: float) -> torch.Tensor:
        return huber_threshold(self.scheduler, timesteps, schedule, c, scale)


@dataclass
class FlowObjective:
    """Rectified flow with shifted logit-normal sigmas (``timestep_sampling`` "shift" with a fixed
    ``shift``, or "flux_shift" where the shift follows each batch's image size)."""
    sampling: str = "flux_shift"
    shift: float = 3.0

    def _shift_for(self, latents: torch.Tensor) -> float:
        if self.sampling == "flux_shift":
            from engine.models.flux import sequence_length

            return math.exp(flux_mu(sequence_length(latents.shape[-2], latents.shape[-1])))
        return self.shift

    def timesteps(self, n: int, latents: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(torch.randn(n, device=latents.device))
        return shifted(u, self._shift_for(latents))

    def fixed_timesteps(self, count: int) -> torch.Tensor:
        """Sigmas at the middles of equal parts of (0, 1), before any shift (validation: the same
        noise levels for every image size)."""
        return torch.tensor([(k + 0.5) / count for k in range(count)])

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              ip_noise_gamma: float = 0.0, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        if ip_noise_gamma and extra is not None:
            noise = noise + ip_noise_gamma * extra
        s = timesteps.to(latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
        return (1 - s) * latents + s * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents

    def weights(self, timesteps: torch.Tensor, min_snr_gamma: float, debiased: bool) -> torch.Tensor | None:
        return None  # (the job refuses SNR weightings for flow models)

    def huber(self, timesteps: torch.Tensor, schedule: str, c: float, scale: float) -> torch.Tensor:
        if schedule == "constant":
            return torch.full_like(timesteps.float(), c * scale)
        if schedule == "exponential":  # from scale at no noise to c x scale at pure noise
            return torch.exp(math.log(c) * timesteps.float()) * scale
        raise ValueError(f"huber_schedule {schedule!r} is for DDPM models")


Objective = DiffusionObjective | FlowObjective
