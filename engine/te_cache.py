"""Text-encoder outputs computed once per distinct caption, for runs where the text encoder is
frozen and captions never change: the encoder then stays idle (or on the CPU) for the whole run.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.text import encode_prompts


class TextEncoderCache:
    def __init__(self) -> None:
        self._hidden: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._hidden)

    @torch.no_grad()
    def build(self, captions: list[str], tokenizer, text_encoder, clip_skip: int = 1,
              batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> None:
        todo = sorted(set(captions) - set(self._hidden))
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            hidden = encode_prompts(tokenizer, text_encoder, chunk, clip_skip).float().cpu()
            self._hidden.update(zip(chunk, hidden))
            if progress:
                progress(min(s + batch_size, len(todo)), len(todo))

    def get(self, captions: list[str], device, dtype) -> torch.Tensor:
        return torch.stack([self._hidden[c] for c in captions]).to(device, dtype)
