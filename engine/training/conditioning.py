"""Captions -> what the UNet is conditioned on, per model family.

SD 1.x/2.x: the text encoder's hidden states. SDXL: both encoders' penultimate states, the pooled
projection and six size numbers per image (original size, crop corner, target size), passed as
``added_cond_kwargs``. Kept out of the loop so the loop reads the same for every family.
"""
from __future__ import annotations

import torch

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
        pooled = te_cache.get_pooled(captions, device, dtype)
        return hidden, {"text_embeds": pooled, "time_ids": batch["time_ids"].to(device, dtype)}
    with torch.set_grad_enabled(train_te):
        if not model.spec.pooled_text:
            return encode_prompts(model.tokenizer, text_encoders[0], captions, clip_skip).to(dtype), None
        hidden, pooled = encode_sdxl_prompts([model.tokenizer, model.tokenizer_2], text_encoders,
                                             captions)
    added = {"text_embeds": pooled.to(dtype), "time_ids": batch["time_ids"].to(device, dtype)}
    return hidden.to(dtype), added
