"""Where the compare grid draws: on the GPU in half precision when the machine has one.

Training draws its samples with the model where training keeps it; the grid (web app and
``launcher.py grid``) loads the base afresh, on the CPU in fp32. Left there, a GPU machine would
draw every cell on its CPU (minutes per SDXL image; a Flux base in fp32 needs 48 GB of RAM). This
moves the denoiser and text encoders to the GPU in the half precision training uses there (bf16
where the card has it, else fp16), keeps the VAE in fp32 (fp16 SD VAEs overflow to NaN) and draws
under autocast, as training's samples do, so the mixed parts agree. A Flux base whose run trained
on a quantized base (training.quantize_base) is quantized the same way for drawing, so that it
fits the card it trained on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Drawing:
    """Device and half precision to draw in (``dtype`` None: fp32, the base as loaded)."""
    device: torch.device
    dtype: torch.dtype | None = None

    def autocast(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def this_machine() -> Drawing:
    """The first CUDA GPU in bf16 (fp16 where the card lacks bf16); else the CPU in fp32."""
    if torch.cuda.is_available():
        return Drawing(torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Drawing(torch.device("cpu"))


def place(model: Any, drawing: Drawing, quantize: str = "none") -> None:
    """Move ``model`` (engine.models.loader.LoadedModel) where ``drawing`` says; a Flux
    transformer is quantized first when ``quantize`` is int8 / nf4 (T5 then in int8, as in
    training)."""
    if drawing.dtype is None and drawing.device.type == "cpu":
        return
    dtype = drawing.dtype or torch.float32
    if quantize != "none" and model.spec.denoiser == "flux":
        from engine.models import flux

        model.unet.to(dtype=dtype)
        model.text_encoders[1].to(dtype=dtype)
        flux.quantize_frozen(model, quantize, dtype, drawing.device)
    model.unet.to(drawing.device, dtype)
    for te in model.text_encoders:
        te.to(drawing.device, dtype)
    model.vae.to(drawing.device)  # fp32: autocast runs its convolutions in half, its norms in fp32


def base_for_grid(base: str, vae: str | None, first_file: Any, local_files_only: bool = False,
                  allow: Any = None) -> tuple[Any, str]:
    """(the base to draw with, the quantization to draw it in). When the files come from a run of
    this base, the run's job says the rest of how to load it (a Flux transformer file's encoder
    files and config folder; its VAE when none is given; its quantized base): drawn as trained.
    Otherwise the base alone. ``allow(job)``: a check of the run's paths (an exposed server)."""
    from pathlib import Path

    from engine.config.job import ConfigError
    from engine.export.card import load_job_for
    from engine.i18n import Explained
    from engine.models.loader import load_job_base, load_sd_components

    try:
        job = load_job_for(Path(first_file))
    except (Explained, ConfigError, OSError):
        job = None
    if job is not None and Path(str(job.model.base)).expanduser() == Path(base).expanduser():
        if allow is not None:
            allow(job)
        return load_job_base(job.model, base=base, vae=vae), job.training.quantize_base
    return load_sd_components(base, local_files_only=local_files_only, vae=vae), "none"
