"""Generate images from loaded base components (optionally with a LoRA at a given weight).

Why build the pipeline from components we already hold: the grid and in-training samples reuse
one base in memory instead of reloading it per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # keep config validation (which parses prompt lines) free of torch imports
    from engine.models.loader import LoadedModel


@dataclass
class SampleSpec:
    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512


def build_pipeline(model: "LoadedModel", unet=None, text_encoder=None, scheduler: str = "euler_a"):
    from diffusers import (DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           StableDiffusionPipeline)

    kinds = {"euler_a": EulerAncestralDiscreteScheduler, "euler": EulerDiscreteScheduler,
             "ddim": DDIMScheduler}
    sched = kinds[scheduler].from_config(model.noise_scheduler.config)
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=text_encoder or model.text_encoder, tokenizer=model.tokenizer,
        unet=unet or model.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, spec: SampleSpec, num_images: int = 1) -> list[Image.Image]:
    """Images for ``spec``; image i uses seed ``spec.seed + i`` (A1111's batch convention)."""
    import torch

    gens = [torch.Generator(device="cpu").manual_seed(spec.seed + i) for i in range(num_images)]
    with torch.no_grad():
        out = pipe(prompt=[spec.prompt] * num_images,
                   negative_prompt=[spec.negative] * num_images if spec.negative else None,
                   num_inference_steps=spec.steps, guidance_scale=spec.cfg_scale,
                   width=spec.width, height=spec.height, generator=gens, output_type="pil")
    return out.images
