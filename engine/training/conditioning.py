"""Captions -> what the UNet is conditioned on, per model family.

SD 1.x/2.x: the text encoder's hidden states. SDXL: both encoders' penultimate states, the pooled
projection and six size numbers per image (original size, crop corner, target size), passed as
``added_cond_kwargs``. Flux.1: T5's states and CLIP-L's pooled output. Kept out of the loop
so the loop reads the same for every family.
"""
from __future__ import annotations

import torch

from engine.models.flux import encode_flux_prompts
from engine.models.text import encode_prompts, encode_sdxl_prompts


def unet_conditioning(model, text_encoders: list, captions: list[str], batch: dict,
                      clip_skip: int, train_te: bool, te_cache, device, dtype
                      ) -> tuple[torch.Tensor, dict | None]:
    """(encoder_hidden_states, added_cond_kwargs or None). ``text_encoders`` may be the
    accelerate-prepared modules (they carry the gradients when the encoders train)."""
    if te_cache is not None:
        hidden = te_cache.get(captions, device, dtype)
        if not model.spec.pooled_text:
            return hidden, None
        return hidden, _added(model, te_cache.get_pooled(captions, device, dtype), batch, device, dtype)
    with torch.set_grad_enabled(train_te):
        if not model.spec.pooled_text:
            return encode_prompts(model.tokenizer, text_encoders[0], captions, clip_skip).to(dtype), None
        tokenizers = [model.tokenizer, model.tokenizer_2]
        if model.spec.denoiser == "flux":
            hidden, pooled = encode_flux_prompts(tokenizers, text_encoders, captions)
        else:
            hidden, pooled = encode_sdxl_prompts(tokenizers, text_encoders, captions)
    return hidden.to(dtype), _added(model, pooled.to(dtype), batch, device, dtype)


def _added(model, pooled: torch.Tensor, batch: dict, device, dtype) -> dict:
    """SDXL: the pooled projection and the size/crop numbers; Flux: the pooled CLIP output."""
    if model.spec.denoiser == "flux":
        return {"pooled_projections": pooled}
    return {"text_embeds": pooled, "time_ids": batch["time_ids"].to(device, dtype)}
