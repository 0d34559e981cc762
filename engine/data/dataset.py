"""The torch Dataset the training loop iterates: one entry per image *repeat*, with optional
in-memory latent cache (encode each image once instead of every epoch)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from engine.data.folder import DatasetIndex
from engine.data.images import load_rgb, resize_center_crop, to_tensor


class TrainingSamples(Dataset):
    def __init__(self, index: DatasetIndex, resolution: int, flip_aug: bool = False):
        self.index = index
        self.resolution = resolution
        self.flip_aug = flip_aug
        unique = index.items
        self._unique = unique
        pos = {it.path: i for i, it in enumerate(unique)}
        self._entries = [pos[it.path] for it in index.epoch_items()]
        self._latents: Optional[list[torch.Tensor]] = None  # [n_unique] of [2 or 1, C, h, w]

    def __len__(self) -> int:
        return len(self._entries)

    def pixels(self, unique_idx: int) -> torch.Tensor:
        im = load_rgb(self._unique[unique_idx].path)
        return to_tensor(resize_center_crop(im, self.resolution, self.resolution))

    @torch.no_grad()
    def cache_latents(self, encode: Callable[[torch.Tensor], torch.Tensor],
                      progress: Callable[[int, int], None] | None = None) -> None:
        """Encode every unique image once (and its mirror when flip_aug is on)."""
        cached = []
        for i in range(len(self._unique)):
            px = self.pixels(i).unsqueeze(0)
            batch = torch.cat([px, px.flip(-1)]) if self.flip_aug else px
            cached.append(encode(batch).cpu())
            if progress:
                progress(i + 1, len(self._unique))
        self._latents = cached

    @property
    def has_latent_cache(self) -> bool:
        return self._latents is not None

    def __getitem__(self, k: int) -> dict:
        i = self._entries[k]
        flip = bool(self.flip_aug and torch.rand(()) < 0.5)
        out: dict = {"caption": self._unique[i].caption}
        if self._latents is not None:
            out["latents"] = self._latents[i][1 if flip else 0]
        else:
            px = self.pixels(i)
            out["pixels"] = px.flip(-1) if flip else px
        return out


def collate(batch: list[dict]) -> dict:
    out: dict = {"captions": [b["caption"] for b in batch]}
    for key in ("latents", "pixels"):
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    return out
