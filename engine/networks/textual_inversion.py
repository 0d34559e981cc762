"""Textual Inversion: learn new token embeddings only; every other weight, and every other row of
the embedding table, stays bit-identical.

Tokens follow the diffusers multi-vector convention (``name``, ``name_1``, ... ``name_{n-1}``) while
training; the saved files follow A1111 (docs/file-formats.md): ``.pt`` with string_to_param, ``.safetensors``
with ``emb_params``, and a PNG whose ``sd-ti-embedding`` text chunk carries the embedding. In A1111
the file name is the word you type in a prompt.
"""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import torch

from engine.data.words import replace_word
from engine.export.pt_io import save_pt
from engine.fileio import atomic_write
from engine.i18n import UserInputError
from engine.networks.ti_templates import TEMPLATES


def token_names(token: str, num_vectors: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


class _Table:
    """One text encoder's embedding table with our rows in it, and a copy to restore the rest.
    ``groups`` = [(token names, init text)]: one group, or DreamArtist's positive + negative."""

    def __init__(self, tokenizer, text_encoder, groups: list[tuple[list[str], str]]) -> None:
        self.text_encoder = text_encoder
        names = [n for group, _ in groups for n in group]
        inits = []
        for group, init_text in groups:
            init_ids = (tokenizer(init_text or "*", add_special_tokens=False).input_ids
                        or tokenizer("*", add_special_tokens=False).input_ids)
            inits += [init_ids[k % len(init_ids)] for k in range(len(group))]
        tokenizer.add_tokens(names)
        self.ids = tokenizer.convert_tokens_to_ids(names)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # set below
        emb = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            for tid, src in zip(self.ids, inits):
                emb[tid] = emb[src]
        self.original = emb.detach().clone()
        self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
        self.keep[self.ids] = False
        # the vocabulary's typical word length: what "a normal word" weighs in this encoder
        self.word_norm = float(self.original[self.keep].float().norm(dim=1).mean())

    @property
    def parameter(self) -> torch.nn.Parameter:
        return self.text_encoder.get_input_embeddings().weight

    @torch.no_grad()
    def restore(self) -> None:
        emb = self.parameter
        keep = self.keep.to(emb.device)
        emb[keep] = self.original.to(emb.device, emb.dtype)[keep]

    @torch.no_grad()
    def limit_norm(self, ratio: float) -> None:
        """Shrink any of our rows longer than ``ratio`` x the vocabulary's mean norm back to that
        length (direction kept). Unbounded rows grow to many times a normal word's length and
        the model then draws blank images, the embedding's own samples included."""
        emb = self.parameter
        ids = torch.tensor(self.ids, device=emb.device)
        rows = emb[ids].float()
        norms = rows.norm(dim=1, keepdim=True)
        cap = ratio * self.word_norm
        emb[ids] = (rows * (cap / norms).clamp(max=1.0)).to(emb.dtype)

    def vectors(self, rows: slice = slice(None)) -> torch.Tensor:
        return self.parameter.detach()[self.ids[rows]].float().cpu().clone()


class TextualInversion:
    """The new tokens inside a loaded model (both encoders of SDXL), plus what is needed to keep
    everything else fixed."""

    def __init__(self, model, token: str, num_vectors: int, init_text: str, template: str,
                 custom_templates: list[str] | None = None,
                 negative: tuple[int, str] | None = None, max_norm: float | None = None):
        """``negative`` = (num_vectors, init_text) adds DreamArtist's negative embedding, the
        word ``<token>-neg``. ``max_norm``: longest a learned vector may grow, as a multiple of
        the vocabulary's mean norm (None: no limit)."""
        self.max_norm = max_norm
        self.model = model
        self.token = token
        self.names = token_names(token, num_vectors)
        self.neg_token = f"{token}-neg" if negative else None
        self.neg_names = token_names(self.neg_token, negative[0]) if negative else []
        groups = [(self.names, init_text)] + ([(self.neg_names, negative[1])] if negative else [])
        pairs = [(model.tokenizer, model.text_encoder)]
        if getattr(model, "text_encoder_2", None) is not None:  # SDXL: a vector set in each
            pairs.append((model.tokenizer_2, model.text_encoder_2))
        for tok, _ in pairs:
            clash = [n for n in self.names + self.neg_names if n in tok.get_vocab()]
            if clash:
                raise UserInputError(f"the token {clash[0]!r} is already a word in the tokenizer; pick a "
                                     "made-up name (e.g. 'zkzstar')", "ti_token_clash", token=clash[0])
        self.tables = [_Table(tok, te, groups) for tok, te in pairs]
        self.ids = self.tables[0].ids[:len(self.names)]
        self.templates = custom_templates or TEMPLATES[template]

    def negative_prompt(self) -> str:
        """DreamArtist: the negative embedding's tokens (the uncond side of CFG)."""
        return " ".join(self.neg_names)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [t.parameter for t in self.tables]

    @property
    def parameter(self) -> torch.nn.Parameter:
        return self.tables[0].parameter

    def expand(self, text: str) -> str:
        """``name`` -> ``name name_1 ... name_{n-1}`` (whole words only)."""
        return replace_word(text, self.token, " ".join(self.names))

    def prompt(self, caption: str, rng: random.Random) -> str:
        """A random template with [name] = the tokens and [filewords] = the image's caption."""
        t = rng.choice(self.templates)
        return t.replace("[name]", " ".join(self.names)).replace("[filewords]", caption).strip(" ,")

    def restore_frozen_rows(self) -> None:
        """Undo whatever the optimizer did to rows other than ours (AdamW moves every row it
        sees a gradient or weight decay for)."""
        for table in self.tables:
            table.restore()
            if self.max_norm is not None:
                table.limit_norm(self.max_norm)

    def vectors(self, negative: bool = False) -> torch.Tensor:
        n = len(self.names)
        return self.tables[0].vectors(slice(n, None) if negative else slice(0, n))

    def save(self, path: Path, name: str, step: int, checkpoint_hash: str, checkpoint_name: str,
             precision: str = "fp32", metadata: dict[str, str] | None = None) -> list[Path]:
        """``path`` (.safetensors) + the A1111 .pt and .png beside it; returns all written.
        SDXL: one .safetensors with ``clip_l`` and ``clip_g`` (the format A1111 and ComfyUI read
        for SDXL; there is no SDXL .pt embedding)."""
        from engine.export.safetensors_io import save_with_metadata

        path = Path(path)
        meta = {"name": name, "step": str(step), **(metadata or {})}
        if len(self.tables) == 2:
            n = slice(0, len(self.names))
            state = {"clip_l": self.tables[0].vectors(n), "clip_g": self.tables[1].vectors(n)}
            save_with_metadata(state, path, meta, precision)
            return [path]
        written = self._save_one(path, name, self.vectors(), step, checkpoint_hash,
                                 checkpoint_name, precision, meta)
        if self.neg_names:  # DreamArtist: <name>-neg, for the negative prompt
            neg = path.with_name(path.stem.replace(name, f"{name}-neg", 1) + path.suffix)
            written += self._save_one(neg, f"{name}-neg", self.vectors(negative=True), step,
                                      checkpoint_hash, checkpoint_name, precision,
                                      {**meta, "name": f"{name}-neg"})
        return written

    @staticmethod
    def _save_one(path: Path, name: str, vectors: torch.Tensor, step: int, checkpoint_hash: str,
                  checkpoint_name: str, precision: str, meta: dict[str, str]) -> list[Path]:
        from engine.export.safetensors_io import cast_state_dict, save_with_metadata

        vec = cast_state_dict({"emb_params": vectors}, precision)["emb_params"]
        save_with_metadata({"emb_params": vec}, path, meta, precision)
        pt = path.with_suffix(".pt")
        data = a1111_embedding_dict(vec, name, step, checkpoint_hash, checkpoint_name)
        save_pt(data, pt, name)  # A1111's safe loader accepts it
        png = path.with_suffix(".png")
        atomic_write(png, lambda tmp: embedding_png(data).save(tmp, format="PNG",
                                                             pnginfo=_png_info(data)))
        return [path, pt, png]


def a1111_embedding_dict(vectors: torch.Tensor, name: str, step: int, checkpoint_hash: str,
                         checkpoint_name: str) -> dict:
    # 265 is the id A1111 writes for "*" (its own placeholder, not used when loading).
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name,
            "step": step, "sd_checkpoint": checkpoint_hash[:10] or None,
            "sd_checkpoint_name": checkpoint_name}


def embedding_to_b64(data: dict) -> str:
    def encode(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.float().tolist()}
        raise TypeError(type(obj))
    return base64.b64encode(json.dumps(data, default=encode).encode()).decode()


def embedding_from_b64(text: str) -> dict:
    def decode(d):
        return torch.tensor(d["TORCHTENSOR"]) if "TORCHTENSOR" in d else d
    return json.loads(base64.b64decode(text), object_hook=decode)


def _png_info(data: dict):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("sd-ti-embedding", embedding_to_b64(data))
    return info


def embedding_png(data: dict, size: int = 256):
    """A card image for sharing the embedding (name and vector count); the data is in the chunk."""
    from PIL import Image, ImageDraw

    vec = data["string_to_param"]["*"]
    im = Image.new("RGB", (size, size), (24, 24, 32))
    d = ImageDraw.Draw(im)
    d.rectangle((8, 8, size - 9, size - 9), outline=(200, 160, 255), width=3)
    d.text((20, size // 2 - 20), str(data["name"])[:24], fill=(255, 255, 255))
    d.text((20, size // 2 + 4), f"{vec.shape[0]} vector(s), step {data['step']}", fill=(180, 180, 200))
    return im
