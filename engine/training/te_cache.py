"""Text-encoder outputs computed once per distinct caption, for runs where the text encoders are
frozen and captions never change: the encoders then stay idle (or on the CPU) for the whole run.
For SDXL the pooled projection is kept too.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.models.flux import encode_flux_prompts
from engine.models.text import encode_prompts, encode_sdxl_prompts


def caption_encoder(model, clip_skip: int = 1) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]:
    """captions -> (hidden states, pooled projection or None), as the training step computes them."""
    if model.spec.denoiser == "flux":
        return lambda chunk: encode_flux_prompts([model.tokenizer, model.tokenizer_2], model.text_encoders, chunk)
    if model.spec.pooled_text:
        return lambda chunk: encode_sdxl_prompts([model.tokenizer, model.tokenizer_2],
                                                 model.text_encoders, chunk)
    return lambda chunk: (encode_prompts(model.tokenizer, model.text_encoder, chunk, clip_skip), None)


class TextEncoderCache:
    def __init__(self) -> None:
        self._hidden: dict[str, torch.Tensor] = {}
        self._pooled: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._hidden)

    @torch.no_grad()
    def build(self, captions: list[str], encode: Callable[[list[str]], tuple],
              batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> None:
        todo = sorted(set(captions) - set(self._hidden))
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            hidden, pooled = encode(chunk)
            self._hidden.update(zip(chunk, hidden.float().cpu()))
            if pooled is not None:
                self._pooled.update(zip(chunk, pooled.float().cpu()))
            if progress:
                progress(min(s + batch_size, len(todo)), len(todo))

    def has(self, caption: str) -> bool:
        return caption in self._hidden

    def get(self, captions: list[str], device, dtype) -> torch.Tensor:
        return torch.stack([self._hidden[c] for c in captions]).to(device, dtype)

    def get_pooled(self, captions: list[str], device, dtype) -> torch.Tensor:
        return torch.stack([self._pooled[c] for c in captions]).to(device, dtype)
