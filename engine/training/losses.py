"""Pure noise and loss helpers for diffusion fine-tuning (no state, easy to test).

The options kohya sd-scripts and OneTrainer users know by name (multires noise, input
perturbation, zero-terminal-SNR, debiased estimation, Huber / smooth-L1 loss, a timestep range)
are written here from their papers; the training loop only calls them when a job turns them on,
so a job without them draws exactly the random numbers it always did (resume stays exact).
"""
from __future__ import annotations

import math
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


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise (J. Whitaker, "Multi-Resolution Noise for Diffusion
    Model Training", 2023): Gaussian noise at ever coarser grids (level i's size divided by a
    random factor of 2-4 to the power i, level 0 full size), weighted by ``discount`` to the
    power i and upsampled to full size, is added to ``noise``; the sum is brought back to unit
    variance. Levels and weights count as in sd-scripts, so its usual settings (6-10 levels,
    discount 0.3) mean the same here. The low-frequency part lets the model change an image's
    overall brightness and large shapes."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for level in range(iterations):
        factor = 2 + 2 * float(torch.rand((), generator=generator, device=noise.device))
        lh, lw = max(1, int(h / factor ** level)), max(1, int(w / factor ** level))
        coarse = torch.randn((b, c, lh, lw), generator=generator, dtype=noise.dtype, device=noise.device)
        out = out + F.interpolate(coarse.float(), size=(h, w), mode="bilinear").to(noise.dtype) * discount ** level
        if lh == 1 or lw == 1:
            break
    return out / out.std()


def sample_timesteps(n: int, low: int, high: int, scheduler: DDPMScheduler, device: torch.device) -> torch.Tensor:
    """``n`` timesteps drawn uniformly from [low, high) within the model's schedule (kohya's
    ``min_timestep`` / ``max_timestep``: a narrow range trains only the noise levels it covers)."""
    total = scheduler.config.num_train_timesteps
    return torch.randint(min(low, total - 1), min(high, total), (n,), device=device)


def noisy_input(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                ip_noise_gamma: float, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The UNet's input. With input perturbation (Ning et al., "Input Perturbation Reduces
    Exposure Bias in Diffusion Models", 2023) the input is noised with ``noise + gamma * extra``
    while the target stays ``noise``: training sees inputs a little off the exact path, as
    sampling later does."""
    if ip_noise_gamma and extra is not None:
        noise = noise + ip_noise_gamma * extra
    return scheduler.add_noise(latents, noise, timesteps)


def zero_terminal_snr(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The same schedule with its betas rescaled so the last timestep is pure noise (Lin et al.,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2023): the model learns to
    start from nothing, which lets it draw really dark or bright images. Only for v-prediction
    (an epsilon model cannot predict the noise from pure noise)."""
    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)


def debiased_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Debiased estimation loss weights (Yu et al., "Debias the Training of Diffusion Models",
    2023): 1/sqrt(SNR) (1/(SNR+1) for v-prediction), SNR capped at 1000, so low-noise timesteps,
    which the plain loss over-weights, count less."""
    snr = torch.clamp(compute_snr(scheduler, timesteps), max=1000.0)
    return 1.0 / (snr + 1) if prediction_type == "v_prediction" else 1.0 / torch.sqrt(snr)


def huber_threshold(scheduler: DDPMScheduler, timesteps: torch.Tensor, schedule: str, c: float,
                    scale: float = 1.0) -> torch.Tensor:
    """Per-sample Huber threshold (Khrapov et al., "Improving Diffusion Models's Data-Corruption
    Resistance using Scheduled Pseudo-Huber Loss", 2024). ``constant``: c x scale everywhere;
    ``exponential``: from scale at t=0 down to c x scale at the last timestep; ``snr``: near 1 at
    low noise (close to the squared loss) down toward c at high noise, where outliers would pull
    hardest."""
    t = timesteps.float()
    if schedule == "constant":
        return torch.full_like(t, c * scale)
    if schedule == "exponential":
        return torch.exp(math.log(c) * t / scheduler.config.num_train_timesteps) * scale
    if schedule == "snr":
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1 - alphas) / alphas).sqrt()
        return (1 - c) / (1 + sigmas) ** 2 + c
    raise ValueError(f"unknown huber_schedule {schedule!r}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                     threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss per element in fp32: squared (l2), absolute (l1), or pseudo-Huber with a per-sample
    threshold c: ``huber`` = 2c(sqrt(d^2 + c^2) - c), about d^2 for small errors and 2c|d| for
    large ones (an outlier image pulls with a bounded force); ``smooth_l1`` = the same divided by c."""
    if loss_type == "l2":
        return F.mse_loss(pred.float(), target.float(), reduction="none")
    diff = pred.float() - target.float()
    if loss_type == "l1":
        return diff.abs()
    if threshold is None:
        raise ValueError(f"loss_type {loss_type!r} needs a threshold")
    c = threshold.float().view(-1, *([1] * (diff.dim() - 1)))
    smooth = 2 * ((diff ** 2 + c ** 2).sqrt() - c)
    if loss_type == "huber":
        return c * smooth
    if loss_type == "smooth_l1":
        return smooth
    raise ValueError(f"unknown loss_type {loss_type!r}")


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


def latent_mask(masks: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Pixel masks [B, 1, H, W] -> the latents' grid [B, 1, h, w], each latent pixel the mean of
    the image pixels it covers."""
    return F.interpolate(masks.to(latents.device, torch.float32), size=latents.shape[-2:], mode="area")


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   loss_type: str = "l2", threshold: Optional[torch.Tensor] = None,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss (mean-squared error unless ``loss_type`` says otherwise) in fp32, optionally
    weighted per sample and, for masked loss, per latent pixel (``mask`` [B, 1, h, w] in [0, 1];
    as sd-scripts, the masked mean is over the whole latent, so a small mask also means a smaller
    loss)."""
    elements = elementwise_loss(pred, target, loss_type, threshold)
    if mask is not None:
        elements = elements * mask
    per_sample = elements.mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale * (cond - uncond)``.
    DreamArtist trains through it, so the negative embedding learns to be a good "uncond"."""
    return uncond + scale * (cond - uncond)
