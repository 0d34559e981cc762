"""Generate images from loaded base components (optionally with a LoRA at a given weight).

Why build the pipeline from components we already hold: the grid and in-training samples reuse
one base in memory instead of reloading it per image.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
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


def pipeline_of(model: "LoadedModel", unet, text_encoders: list, scheduler):
    """The family's diffusers pipeline (engine.models.families) over these components."""
    import inspect

    import diffusers

    cls = getattr(diffusers, model.spec.pipeline)
    accepted = inspect.signature(cls.__init__).parameters
    # Flux's transformer sits in engine.models.flux.FluxDenoiser for training; its pipeline takes it bare
    parts = {"vae": model.vae, "unet": unet, "transformer": getattr(unet, "transformer", unet),
             "scheduler": scheduler, "tokenizer": model.tokenizer,
             "tokenizer_2": model.tokenizer_2, "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False}
    parts |= {"text_encoder" if i == 0 else f"text_encoder_{i + 1}": te for i, te in enumerate(text_encoders)}
    return cls(**{k: v for k, v in parts.items() if k in accepted})


def build_pipeline(model: "LoadedModel", unet=None, text_encoders: list | None = None,
                   scheduler: str = "euler_a"):
    """A diffusers pipeline over the components we hold (``unet``/``text_encoders`` override them,
    e.g. the modules being trained)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    kinds = {"euler_a": EulerAncestralDiscreteScheduler, "euler": EulerDiscreteScheduler,
             "ddim": DDIMScheduler}
    if model.spec.denoiser == "flux":  # a flow model samples with its own flow-matching Euler
        sched = type(model.noise_scheduler).from_config(model.noise_scheduler.config)
    else:
        sched = kinds[scheduler].from_config(model.noise_scheduler.config)
    pipe = pipeline_of(model, unet or model.unet, text_encoders or model.text_encoders, sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_batch(pipe, specs: list[SampleSpec], encode=None) -> list[Image.Image]:
    """One pipeline call for several specs that share steps, CFG and size (each keeps its own
    prompt, negative and seed): the grid batches its Z cells this way. ``encode`` (prompts ->
    text-encoder output) replaces the pipeline's own prompt encoding, e.g. for an embedding at an
    A1111 emphasis strength."""
    import torch

    first = specs[0]
    shared = {(s.steps, s.cfg_scale, s.width, s.height) for s in specs}
    if len(shared) != 1:
        raise ValueError("specs in one batch must share steps, cfg_scale, width and height")
    gens = [torch.Generator(device="cpu").manual_seed(s.seed) for s in specs]
    negatives = [s.negative or "" for s in specs] if any(s.negative for s in specs) else None
    text = {"prompt": [s.prompt for s in specs], "negative_prompt": negatives}
    extra = {}
    if getattr(pipe, "tokenizer_2", None) is not None and hasattr(pipe, "transformer"):
        from engine.models.flux import t5_tokens

        # Flux: guidance is a number the model is conditioned on, no negative prompt
        text = {"prompt": [s.prompt for s in specs]}
        extra["max_sequence_length"] = t5_tokens(pipe.tokenizer_2)
    if encode is not None:
        text = {"prompt_embeds": encode([s.prompt for s in specs]),
                "negative_prompt_embeds": encode([s.negative or "" for s in specs])}
    with torch.no_grad():
        out = pipe(**text, num_inference_steps=first.steps, guidance_scale=first.cfg_scale,
                   width=first.width, height=first.height, generator=gens, output_type="pil", **extra)
    return out.images


def generate(pipe, spec: SampleSpec, num_images: int = 1) -> list[Image.Image]:
    """Images for ``spec``; image i uses seed ``spec.seed + i`` (A1111's batch convention)."""
    return generate_batch(pipe, [replace(spec, seed=spec.seed + i) for i in range(num_images)])
