"""Prompt -> text-encoder hidden states, with A1111-style clip skip."""
from __future__ import annotations

import torch


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
    """clip_skip=2 takes the penultimate layer and re-applies the final LayerNorm, as A1111 does."""
    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(ids)[0]
    out = text_encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[-clip_skip]
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden)


def encode_sdxl_prompts(tokenizers, text_encoders, prompts: list[str]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: the penultimate hidden states of both encoders side by side ([B, 77, 768 + 1280]) and
    the second encoder's pooled projection ([B, 1280]), exactly what diffusers' SDXL pipeline
    conditions on."""
    states, pooled = [], None
    for tokenizer, text_encoder in zip(tokenizers, text_encoders):
        ids = tokenize(tokenizer, prompts).to(text_encoder.device)
        out = text_encoder(ids, output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled
