"""Aesthetic Gradients, part 2: steer a prompt toward an aesthetic embedding at generation time.

What the A1111 extension does, per prompt: a few Adam steps on the text encoder that raise the
cosine similarity between the prompt's projected CLIP text features and the (optionally
text-rotated) image embedding; the personalised encoder's hidden states ``zn`` are then blended
with the normal ones ``z``: ``(1 - w) * z + w * zn`` (or a spherical blend). Negative prompts are
personalised too, as in the extension.

Where we differ on purpose: the extension optimises a fresh copy of the hub CLIP's text tower;
we optimise the base model's own text encoder in place (so a fine-tuned checkpoint's encoder is
what gets steered) with the CLIP's text projection, and put every weight back bit for bit
afterwards (snapshot + copy, also on errors). The spherical blend works per token vector (the
extension's formula normalises across tokens). Weight 0 (or 0 steps) skips the work entirely, so
generation is identical to not using an embedding. ``zn`` is cached per prompt, so a grid's
weight columns cost one personalisation per prompt.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.generate.aesthetic import AestheticError, AestheticSettings, quiet_transformers, read_embedding
from engine.models.loader import LoadedModel
from engine.models.text import encode_prompts, tokenize


def slerp(low: torch.Tensor, high: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical blend along the last dimension (falls back to linear for parallel vectors)."""
    low_n = low / low.norm(dim=-1, keepdim=True)
    high_n = high / high.norm(dim=-1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(-1).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    so = torch.where(safe, so, torch.ones_like(so))
    a = torch.where(safe, torch.sin((1.0 - t) * omega) / so, torch.full_like(so, 1.0 - t))
    b = torch.where(safe, torch.sin(t * omega) / so, torch.full_like(so, t))
    return a.unsqueeze(-1) * low + b.unsqueeze(-1) * high


def load_text_projection(clip: str, local_files_only: bool = False) -> nn.Linear:
    """The CLIP's text projection (text width -> joint embedding width), frozen."""
    from transformers import CLIPTextModelWithProjection

    try:
        with quiet_transformers():
            model = CLIPTextModelWithProjection.from_pretrained(clip, local_files_only=local_files_only)
    except OSError as err:
        raise AestheticError(f"cannot load CLIP '{clip}' for its text projection: {err}", "ae_clip_load",
                             clip=clip, error=err) from None
    return model.text_projection.float().eval().requires_grad_(False)


class AestheticPersonalizer:
    """Personalises one text encoder toward one embedding; restores it after every prompt."""

    def __init__(self, text_encoder, tokenizer, projection: nn.Linear, embedding: torch.Tensor,
                 settings: AestheticSettings, clip_skip: int = 1) -> None:
        width = text_encoder.config.hidden_size
        if projection.in_features != width:
            raise AestheticError(f"the CLIP's text width is {projection.in_features}, the base model's "
                                 f"text encoder has {width}: use the CLIP the base model was built on",
                                 "ae_clip_width", clip_width=projection.in_features, width=width)
        if projection.out_features != embedding.shape[-1]:
            raise AestheticError(f"the embedding has {embedding.shape[-1]} values, this CLIP projects "
                                 f"to {projection.out_features}: it was made with another CLIP", "ae_other_clip",
                                 values=embedding.shape[-1], projected=projection.out_features)
        self.te, self.tokenizer, self.settings, self.clip_skip = text_encoder, tokenizer, settings, clip_skip
        self.projection = projection.to(text_encoder.device)
        self.image_embedding = embedding.to(text_encoder.device)
        self._cache: dict[str, torch.Tensor] = {}

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised projected text features (what CLIP compares with image embeddings)."""
        pooled = self.te(ids).pooler_output.float()
        feats = self.projection(pooled)
        return feats / feats.norm(dim=-1, keepdim=True)

    def similarity(self, prompt: str) -> float:
        """Cosine similarity of the prompt's text features (current weights) with the target."""
        with torch.no_grad():
            ids = tokenize(self.tokenizer, [prompt]).to(self.te.device)
            return float(self.features(ids) @ self.target().T)

    @torch.no_grad()
    def target(self) -> torch.Tensor:
        """The image embedding, rotated toward (or away from) the settings' text if one is set."""
        s = self.settings
        if not s.text:
            return self.image_embedding
        text = self.features(tokenize(self.tokenizer, [s.text]).to(self.te.device))
        if s.text_negative:
            text = self.image_embedding - text
            text = text / text.norm(dim=-1, keepdim=True)
        return slerp(self.image_embedding, text, s.slerp_angle)

    def personalized_states(self, prompt: str, after_step=None) -> torch.Tensor:
        """Hidden states of ``prompt`` from the encoder after ``settings.steps`` Adam steps
        (cached); the encoder is restored before returning. ``after_step(i, similarity)`` lets
        tests watch the optimisation."""
        if prompt in self._cache:
            return self._cache[prompt]
        te, s = self.te, self.settings
        params = dict(te.named_parameters())
        saved = {n: p.detach().clone() for n, p in params.items()}
        flags = {n: p.requires_grad for n, p in params.items()}
        dtype, was_training = te.dtype, te.training
        target = self.target()
        ids = tokenize(self.tokenizer, [prompt]).to(te.device)
        try:
            te.float().eval().requires_grad_(True)
            optimizer = torch.optim.Adam(te.parameters(), lr=s.lr)
            with torch.enable_grad():
                for i in range(s.steps):
                    loss = -(self.features(ids) @ target.T).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    if after_step:
                        after_step(i, -float(loss.detach()))
            with torch.no_grad():
                states = encode_prompts(self.tokenizer, te, [prompt], self.clip_skip).to(dtype)
        finally:
            te.to(dtype)
            with torch.no_grad():
                for n, p in te.named_parameters():
                    p.copy_(saved[n])
                    p.requires_grad_(flags[n])
                    p.grad = None
            te.train(was_training)
        self._cache[prompt] = states
        return states

    @torch.no_grad()
    def encode(self, prompts: list[str], weight: float) -> torch.Tensor:
        """Text-encoder output for ``prompts`` at aesthetic ``weight`` (0 = untouched)."""
        z = encode_prompts(self.tokenizer, self.te, prompts, self.clip_skip)
        s = self.settings
        if weight == 0 or s.steps == 0:
            return z
        zn = torch.cat([self.personalized_states(p) for p in prompts])
        if s.slerp:
            return slerp(z.float(), zn.float(), weight).to(z.dtype)
        return z * (1 - weight) + zn * weight


class AestheticSwapper:
    """Grid swapper for aesthetic embeddings: rows are embedding files, columns aesthetic weights."""

    def __init__(self, model: LoadedModel, settings: AestheticSettings | None = None,
                 local_files_only: bool = False) -> None:
        if model.spec.aesthetic_clip is None:
            raise AestheticError("Aesthetic Gradients work with SD 1.x / 2.x base models (the A1111 "
                                 "extension has no SDXL support either)", "ae_sdxl")
        self.model = model
        self.settings = settings or AestheticSettings()
        self.local_files_only = local_files_only
        self.weight = 1.0
        self.name = ""
        self.injections = 0
        self.personalizer: AestheticPersonalizer | None = None
        self._projections: dict[str, nn.Linear] = {}

    def _clip_for(self, meta: dict[str, str]) -> str:
        clip = self.settings.clip or meta.get("clip_model") or self.model.spec.aesthetic_clip
        if not clip:
            raise AestheticError("say which CLIP made this embedding (aesthetic clip setting)", "ae_which_clip")
        return clip

    def load(self, path: Path) -> None:
        embedding, meta = read_embedding(Path(path))
        clip = self._clip_for(meta)
        if clip not in self._projections:
            self._projections[clip] = load_text_projection(clip, self.local_files_only)
            self.injections += 1
        self.name = meta.get("name") or Path(path).stem
        self.personalizer = AestheticPersonalizer(
            self.model.text_encoder, self.model.tokenizer, self._projections[clip], embedding,
            self.settings)

    def set_weight(self, weight: float) -> None:
        self.weight = weight

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if self.personalizer is None:
            raise RuntimeError("load an aesthetic embedding first")
        return self.personalizer.encode(prompts, self.weight)

    def prompt_tag(self, name: str, weight: float) -> str:
        """The extension's infotext fields, so the settings travel with the image."""
        s = self.settings
        return (f"Aesthetic embedding: {self.name}, Aesthetic weight: {weight:g}, Aesthetic steps: "
                f"{s.steps}, Aesthetic LR: {s.lr:g}, Aesthetic slerp: {s.slerp}, Aesthetic text: "
                f"{s.text}, Aesthetic text negative: {s.text_negative}, Aesthetic slerp angle: "
                f"{s.slerp_angle:g}")
