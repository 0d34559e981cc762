"""The torch Dataset the training loop iterates: one entry per image *repeat* (plus
regularization images), each with its training size (square, or its aspect bucket), an optional
latent cache in memory or on disk, and a per-sample loss weight (prior_loss_weight for reg
images)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle, islice
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler

from engine.data.buckets import BucketAssignment, assign_buckets
from engine.data.folder import DatasetError, DatasetIndex, ImageItem
from engine.data.images import (
    MAX_ASPECT,
    cover_and_crop,
    image_size,
    load_rgb,
    mask_tensor,
    proportions_ok,
    resize_center_crop,
    to_tensor,
)
from engine.data.latent_cache import DiskLatentCache
from engine.data.masks import MaskSource
from engine.data.shards import shard_of


@dataclass(frozen=True)
class BucketOptions:
    min_size: int = 256
    max_size: int = 1024
    no_upscale: bool = False


@dataclass(frozen=True)
class Entry:
    unique: int          # index into the unique images
    loss_weight: float   # 1.0, or prior_loss_weight for regularization images


def _usable_size(path) -> tuple[int, int]:
    """The image's size from its header; an unreadable file or an extreme shape is a clear
    DatasetError now, before any resize tries to allocate it, not a traceback mid-training."""
    from PIL import UnidentifiedImageError

    try:
        w, h = image_size(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: not a readable image ({err}); remove it from the dataset",
                           "dataset_unreadable_image", path=path, error=err) from None
    if not proportions_ok(w, h):
        raise DatasetError(f"{path}: extreme shape ({w}x{h}, more than {MAX_ASPECT}:1); crop it or remove it "
                           "from the dataset", "dataset_extreme_shape", path=path, width=w, height=h,
                           ratio=MAX_ASPECT)
    return w, h


class TrainingSamples(Dataset):
    def __init__(self, index: DatasetIndex, resolution: int, flip_aug: bool = False,
                 reg_index: DatasetIndex | None = None, prior_loss_weight: float = 1.0,
                 buckets: BucketOptions | None = None, masks: MaskSource | None = None):
        self.index = index
        self.masks = masks  # masked loss: every entry gets a mask (all ones where there is none)
        self._mask_cache: dict[int, torch.Tensor] = {}
        self._without_mask: set[int] = set()
        self.resolution = resolution
        self.flip_aug = flip_aug
        train_items = index.items
        reg_items = reg_index.items if reg_index else []
        self._unique: list[ImageItem] = train_items + reg_items
        pos = {it.path: i for i, it in enumerate(self._unique)}
        self._entries = [Entry(pos[it.path], 1.0) for it in index.epoch_items()]
        if reg_index:
            # kohya's rule: per epoch, as many reg samples as training samples (cycled).
            reg_epoch = [Entry(pos[it.path], prior_loss_weight) for it in reg_index.epoch_items()]
            self._entries += list(islice(cycle(reg_epoch), len(self._entries)))
        self.num_reg_images = len(reg_items)
        self._num_train_unique = len(train_items)
        sizes = {str(i): _usable_size(it.path) for i, it in enumerate(self._unique)}  # headers only
        if buckets:
            self.assignment = assign_buckets(sizes, resolution, buckets.min_size, buckets.max_size,
                                             buckets.no_upscale)
        else:
            self.assignment = BucketAssignment({str(i): (resolution, resolution)
                                                for i in range(len(self._unique))})
        self._latents: Optional[list[torch.Tensor]] = None  # [n_unique] of [2 or 1, C, h, w]
        self._size_cond: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def size_of(self, unique_idx: int) -> tuple[int, int]:
        return self.assignment.buckets[str(unique_idx)]

    def bucket_keys(self) -> list[tuple[int, int]]:
        """The training size of every entry (what the batch sampler groups by)."""
        return [self.size_of(e.unique) for e in self._entries]

    def size_conditioning(self, unique_idx: int) -> torch.Tensor:
        """SDXL's six numbers: original (h, w), crop corner (top, left), target (h, w)."""
        if unique_idx not in self._size_cond:  # a header read, once per image
            src_w, src_h = image_size(self._unique[unique_idx].path)
            w, h = self.size_of(unique_idx)
            _, left, top = cover_and_crop(src_w, src_h, w, h)
            self._size_cond[unique_idx] = torch.tensor([src_h, src_w, top, left, h, w],
                                                       dtype=torch.float32)
        return self._size_cond[unique_idx]

    def pixels(self, unique_idx: int) -> torch.Tensor:
        im = load_rgb(self._unique[unique_idx].path)
        w, h = self.size_of(unique_idx)
        return to_tensor(resize_center_crop(im, w, h))

    def mask(self, unique_idx: int) -> torch.Tensor:
        """The loss mask [1, h, w] at the image's training size, cropped as the image is; all ones
        for an image without one (and for regularization images)."""
        if unique_idx not in self._mask_cache:
            w, h = self.size_of(unique_idx)
            im = None
            if self.masks is not None and unique_idx < self._num_train_unique:  # (reg images have none)
                im = self.masks.load(self._unique[unique_idx].path)
                if im is None:
                    self._without_mask.add(unique_idx)
            self._mask_cache[unique_idx] = (torch.ones(1, h, w) if im is None
                                            else mask_tensor(resize_center_crop(im, w, h)).clamp(0, 1))
        return self._mask_cache[unique_idx]

    def prepare_masks(self) -> int:
        """Read every training image's mask now (a bad mask file fails before training); returns
        how many training images have none."""
        for i in range(self._num_train_unique):
            self.mask(i)
        return len(self._without_mask)

    @torch.no_grad()
    def cache_latents(self, encode: Callable[[torch.Tensor], torch.Tensor],
                      progress: Callable[[int, int], None] | None = None,
                      disk: DiskLatentCache | None = None) -> None:
        """Encode every unique image once (and its mirror when flip_aug is on); with ``disk``,
        reuse and fill the on-disk cache."""
        cached = []
        variants = 2 if self.flip_aug else 1
        for i in range(len(self._unique)):
            size = self.size_of(i)
            entry = disk.path_for(self._unique[i].path, size) if disk else None  # hashes the file once
            lat = disk.load(entry, size, variants) if disk else None
            if lat is None:
                px = self.pixels(i).unsqueeze(0)
                batch = torch.cat([px, px.flip(-1)]) if self.flip_aug else px
                lat = encode(batch).cpu()
                if disk:
                    disk.misses += 1
                    disk.store(entry, size, lat)
            elif disk:
                disk.hits += 1
            cached.append(lat)
            if progress:
                progress(i + 1, len(self._unique))
        self._latents = cached

    @property
    def has_latent_cache(self) -> bool:
        return self._latents is not None

    def captions(self) -> list[str]:
        return [it.caption for it in self._unique]

    def __getitem__(self, k: int) -> dict:
        """Index ``k + len(self)`` is entry ``k`` mirrored: the batch sampler decides flips
        from its own seeded generator, so a resumed run flips exactly like an unbroken one."""
        flip = k >= len(self._entries)
        entry = self._entries[k - len(self._entries) if flip else k]
        i = entry.unique
        out: dict = {"caption": self._unique[i].caption, "loss_weight": entry.loss_weight,
                     "time_ids": self.size_conditioning(i)}
        if self.masks is not None:
            mask = self.mask(i)
            out["mask"] = mask.flip(-1) if flip else mask
        if self._latents is not None:
            out["latents"] = self._latents[i][1 if flip else 0]
        else:
            px = self.pixels(i)
            out["pixels"] = px.flip(-1) if flip else px
        return out


class BucketBatchSampler(Sampler[list[int]]):
    """Batches whose images share one training size (a tensor batch needs equal shapes):
    entries are shuffled within each bucket, cut into batches, and the batches shuffled, all from
    a seeded generator (same seed, same order). With one bucket it is a plain shuffled loader.

    With ``flip`` each entry is mirrored with probability 1/2, decided here (index + number of
    entries = mirrored). ``state()`` / ``resume()`` put an interrupted epoch back exactly: the
    generator as it was when the epoch began, and how many batches were already trained.

    With ``num_processes`` > 1 (data-parallel training) batches are cut ``batch_size x N`` long,
    the same on every process (same seed), and each process yields its ``rank``'s rows, a short
    batch padded so that every process gets the same count (the trainer relies on that to find
    its rows of the global batch's noise)."""

    def __init__(self, keys: list[tuple[int, int]], batch_size: int, seed: int, flip: bool = False,
                 num_processes: int = 1, rank: int = 0):
        self.keys = keys
        self.batch_size = batch_size * num_processes  # a global batch
        self.num_processes, self.rank = num_processes, rank
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)
        groups: dict[tuple[int, int], list[int]] = {}
        for idx, key in enumerate(keys):
            groups.setdefault(key, []).append(idx)
        self.groups = [groups[k] for k in sorted(groups)]
        self.epoch_start_state = self.generator.get_state()
        self._skip = 0

    def __len__(self) -> int:
        return sum(-(-len(g) // self.batch_size) for g in self.groups)

    @property
    def pending_skip(self) -> int:
        """Batches the next epoch will skip (read before iterating it)."""
        return self._skip

    def resume(self, generator_state: torch.Tensor, skip_batches: int) -> None:
        """The next epoch replays the one that began at ``generator_state``, minus its first
        ``skip_batches`` batches (already trained)."""
        self.generator.set_state(generator_state)
        self._skip = skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch_start_state = self.generator.get_state()
        n = len(self.keys)
        batches = []
        for g in self.groups:
            order = torch.randperm(len(g), generator=self.generator).tolist()
            members = [g[j] for j in order]
            if self.flip:
                mirrored = torch.rand(len(members), generator=self.generator) < 0.5
                members = [m + n if f else m for m, f in zip(members, mirrored.tolist())]
            batches += [members[s:s + self.batch_size] for s in range(0, len(members), self.batch_size)]
        skip, self._skip = self._skip, 0
        for j in torch.randperm(len(batches), generator=self.generator).tolist()[skip:]:
            yield [batches[j][r] for r in shard_of(len(batches[j]), self.num_processes, self.rank)]


def collate(batch: list[dict]) -> dict:
    out: dict = {"captions": [b["caption"] for b in batch],
                 "loss_weights": torch.tensor([b["loss_weight"] for b in batch], dtype=torch.float32)}
    for key in ("latents", "pixels", "time_ids"):
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    if "mask" in batch[0]:
        out["masks"] = torch.stack([b["mask"] for b in batch])
    return out
