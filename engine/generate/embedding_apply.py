"""Textual Inversion embeddings on a base held in memory, at an A1111 emphasis strength.

"Strength" for an embedding is what A1111 users type: ``(name:0.8)``. A1111's emphasis scales the
text encoder's output at the embedding's token positions by the weight, then rescales the whole
output so its mean is unchanged; we encode prompts the same way and hand the pipeline the
embeddings. The word is the embedding's ``name`` (our files record it; otherwise the file name),
so all epochs of one run answer to the same word. Like in A1111 the word wins over a dictionary
word of the same spelling: its vectors live under private tokens ``<name>``, ``<name>_1``, ... and
the word in a prompt is rewritten to them.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from engine.export.safetensors_io import load_with_metadata
from engine.i18n import Explained
from engine.models.loader import LoadedModel
from engine.models.text import tokenize
from engine.networks.textual_inversion import token_names


class EmbeddingFileError(Explained, ValueError):
    pass


def read_embedding(path: Path) -> tuple[torch.Tensor, str]:
    """(vectors [n, dim], name) from our/A1111 ``.safetensors`` (emb_params) or A1111 ``.pt``."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        state, meta = load_with_metadata(path)
        if "clip_l" in state and "clip_g" in state:
            raise EmbeddingFileError(f"{path.name}: an SDXL embedding; the grid's embedding "
                                     "strength axis works with SD 1.x embeddings only so far", "embedding_sdxl",
                                     name=path.name)
        if "emb_params" not in state:
            raise EmbeddingFileError(f"{path.name}: no 'emb_params' tensor (an SD 1.5 embedding has one)",
                                     "embedding_no_params", name=path.name)
        name = meta.get("name") or meta.get("ss_output_name") or path.stem
        return state["emb_params"].float(), name
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    params = data.get("string_to_param") if isinstance(data, dict) else None
    if not params:
        raise EmbeddingFileError(f"{path.name}: no 'string_to_param' (not an A1111 embedding)",
                                 "embedding_not_a1111", name=path.name)
    vectors = next(iter(params.values())).float()
    return vectors, str(data.get("name") or path.stem)


MEAN_RESTORE_MIN = 0.01  # the output's mean must be at least this share of its mean magnitude
MEAN_RESTORE_BOUNDS = (0.5, 2.0)  # and the restoring factor stays inside these


def emphasize(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale token rows by their weights, then restore the overall mean as A1111's "original"
    emphasis does, but only where that is a small correction. A1111 divides by the new mean; a
    text encoder whose output mean is close to zero (the embedded model's: ~1e-8) turns that
    ratio into noise or inf, so then the rows are only scaled (A1111's "no norm"), and otherwise
    the factor is bounded. SD's CLIP outputs have a mean well away from zero and only a few rows
    change, so the factor there is near 1 and the result is A1111's."""
    scaled = hidden * weights.to(hidden.dtype)[..., None]
    original, new = hidden.mean(), scaled.mean()
    floor = MEAN_RESTORE_MIN * hidden.abs().mean()
    if original.abs() < floor or new.abs() < floor or torch.sign(original) != torch.sign(new):
        return scaled
    return scaled * (original / new).clamp(*MEAN_RESTORE_BOUNDS)


class EmbeddingSwapper:
    """Grid swapper for TI files: the tokens are added once; epochs copy their vectors in."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.name: str | None = None
        self.ids: list[int] = []
        self.strength = 1.0
        self.injections = 0

    def load(self, path: Path) -> None:
        vectors, name = read_embedding(Path(path))
        tok, te = self.model.tokenizer, self.model.text_encoder
        if self.name is None:
            aliases = token_names(f"<{name}>", vectors.shape[0])
            tok.add_tokens(aliases)
            te.resize_token_embeddings(len(tok), mean_resizing=False)
            self.name, self.ids = name, tok.convert_tokens_to_ids(aliases)
            self.injections += 1
        elif (self.name, len(self.ids)) != (name, vectors.shape[0]):
            raise EmbeddingFileError(f"{Path(path).name}: a grid compares epochs of one embedding "
                                     f"('{self.name}', {len(self.ids)} vectors)", "embedding_other",
                                     name=Path(path).name, embedding=self.name, count=len(self.ids))
        table = te.get_input_embeddings().weight
        if vectors.shape[1] != table.shape[1]:
            raise EmbeddingFileError(f"{Path(path).name}: vectors of width {vectors.shape[1]}, this "
                                     f"text encoder uses {table.shape[1]} (wrong base model?)", "embedding_width",
                                     name=Path(path).name, width=vectors.shape[1], expected=table.shape[1])
        with torch.no_grad():
            table[self.ids] = vectors.to(table.device, table.dtype)

    def set_weight(self, weight: float) -> None:
        self.strength = weight

    def prompt_tag(self, name: str, weight: float) -> str:
        return f"({self.name}:{weight:g})"

    def expand(self, text: str) -> str:
        """The embedding's word -> its private tokens (all vectors)."""
        aliases = " ".join(token_names(f"<{self.name}>", len(self.ids)))
        return re.sub(rf"(?<![\w<]){re.escape(self.name)}(?![\w>])", aliases, text)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder output for prompts naming the embedding, at the current strength."""
        tok, te = self.model.tokenizer, self.model.text_encoder
        ids = tokenize(tok, [self.expand(p) for p in prompts]).to(te.device)
        hidden = te(ids)[0]
        if self.strength == 1.0:
            return hidden
        weights = torch.ones(ids.shape, device=hidden.device)
        weights[torch.isin(ids, torch.tensor(self.ids, device=ids.device))] = self.strength
        return torch.stack([emphasize(h, w) for h, w in zip(hidden, weights)])
