"""The data side of a training job: dataset index (+ regularization images), buckets, latent
cache (memory or disk), text-encoder output cache, and the batch loader.

Split from setup.py so each file keeps to one job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.config.job import JobConfig
from engine.data.captions import caption_is_fixed
from engine.data.dataset import BucketBatchSampler, BucketOptions, TrainingSamples, collate
from engine.data.folder import DatasetError, DatasetIndex, ImageItem, images_under, scan_dataset
from engine.data.holdout import hold_out
from engine.data.latent_cache import DiskLatentCache, vae_fingerprint
from engine.data.masks import MaskSource
from engine.models.loader import LoadedModel
from engine.training.callbacks import Callbacks
from engine.training.te_cache import TextEncoderCache, caption_encoder
from engine.training.validation import ValidationSet, build_validation_set, validation_seed


@dataclass
class DataSetup:
    dataset: TrainingSamples
    loader: DataLoader
    te_cache: TextEncoderCache | None
    validation: ValidationSet | None = None


def _usable(index: DatasetIndex, resolution: int, cb: Callbacks | None) -> DatasetIndex:
    """Leave out what cannot be trained on (a truncated file, a text file named .png, a 16 px
    image, an exact duplicate), saying so; never touch the files. Nothing usable: DatasetError."""
    from engine.data.validate import excluded, usable_index

    usable, report = usable_index(index, resolution)
    left_out = excluded(report)
    for path, why in left_out:
        if cb is not None:
            cb.on_log(f"left out {path}: {why}")
    if not usable.subsets:
        raise DatasetError(f"no usable images in {index.root}: " + "; ".join(f"{p.name}: {w}" for p, w in left_out[:5]),
                           "dataset_none_usable", path=index.root, first=f"{left_out[0][0].name}: {left_out[0][1]}")
    return usable


def split_job_dataset(cfg: JobConfig, cb: Callbacks | None = None) -> tuple[DatasetIndex, list[ImageItem]]:
    """(the job's images that training can use (see _usable), the images held out of them for
    the validation loss by dataset.validation_split, never trained on)."""
    d = cfg.dataset
    usable = _usable(scan_dataset(d.path, d.default_repeats, d.caption_extension), d.resolution, cb)
    return hold_out(usable, d.validation_split, validation_seed(cfg)) if d.validation_split else (usable, [])


def scan_job_dataset(cfg: JobConfig, cb: Callbacks | None = None) -> DatasetIndex:
    """The job's images that training can use, without those held out for the validation loss."""
    return split_job_dataset(cfg, cb)[0]


def scan_validation(cfg: JobConfig, held_out: list[ImageItem], cb: Callbacks | None = None) -> list[ImageItem]:
    """The images the validation loss is measured on: dataset.validation_path's, else those the
    split held out (none when neither is set)."""
    d = cfg.dataset
    if d.validation_path:
        return _usable(scan_dataset(d.validation_path, 1, d.caption_extension), d.resolution, cb).items
    return held_out


def uses_prior_images(cfg: JobConfig) -> bool:
    """dataset.prior_preservation, for the methods it can help: an embedding only adds a word,
    so a prompt without it cannot change and the base's images would teach it nothing."""
    from engine.methods import usage_of

    return cfg.dataset.prior_preservation and usage_of(cfg.network.type) != "embedding"


def reg_root(cfg: JobConfig) -> Path | None:
    """Where the job's regularization images are: reg_path, else the prior-preservation images'
    own folder in the run's output folder, else none."""
    d = cfg.dataset
    if d.reg_path:
        return Path(d.reg_path)
    return Path(cfg.output.dir) / "prior_images" if uses_prior_images(cfg) else None


def regularized(cfg: JobConfig, index: DatasetIndex | None = None) -> bool:
    """Whether training will pair samples with regularization images: kohya's rule then puts as
    many of them in each epoch as training samples, so the epoch has twice the steps. ``index``:
    the usable training images when the caller already has them (else they are scanned)."""
    from engine.data.prior_images import prior_prompts

    d = cfg.dataset
    if d.reg_path:
        return d.num_class_images > 0 or bool(images_under(Path(d.reg_path)))
    if not uses_prior_images(cfg):
        return False
    if index is None:
        try:
            index = scan_job_dataset(cfg)
        except DatasetError:
            return False
    return bool(prior_prompts(index, cfg.output.trigger_phrase))


def scan_reg_dataset(cfg: JobConfig, cb: Callbacks | None = None) -> DatasetIndex | None:
    """The regularization images, if any (scanned after missing class / prior images were made)."""
    root = reg_root(cfg)
    if root is None or (not cfg.dataset.reg_path and not images_under(root)):  # no caption had the trigger
        return None
    return _usable(scan_dataset(root, 1, cfg.dataset.caption_extension), cfg.dataset.resolution, cb)


def caches_text_encoder_outputs(cfg: JobConfig, family) -> bool:
    """The job asks for it, or the family's encoders never train (Flux: T5 runs once per caption)
    and the captions do not change from step to step."""
    d = cfg.dataset
    return cfg.training.cache_text_encoder_outputs or (not family.trains_text_encoders and caption_is_fixed(
        d.shuffle_caption, d.caption_dropout_rate, d.tag_dropout_rate))


@torch.no_grad()
def encode_latents(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """The latent distribution's mean, shifted (Flux's VAE) and scaled. The mean (not a sample)
    makes a cached latent equal to a freshly encoded one, so caching changes speed only, never the
    result; the SD VAE's posterior is so narrow that sampling adds next to nothing."""
    vae = model.vae
    mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        mean = mean - shift
    return mean * vae.config.scaling_factor


def build_data(cfg: JobConfig, model: LoadedModel, device: torch.device, cb: Callbacks,
               index: DatasetIndex, reg_index: DatasetIndex | None, num_processes: int = 1,
               rank: int = 0, validation_items: list[ImageItem] | None = None, objective=None) -> DataSetup:
    d, t = cfg.dataset, cfg.training
    buckets = (BucketOptions(d.min_bucket_reso, d.max_bucket_reso, d.bucket_no_upscale)
               if d.enable_bucket else None)
    masks = MaskSource(Path(d.path), Path(d.mask_path) if d.mask_path else None) if t.masked_loss else None
    dataset = TrainingSamples(index, d.resolution, d.flip_aug, reg_index, d.prior_loss_weight, buckets, masks)

    def encode(px: torch.Tensor) -> torch.Tensor:
        return encode_latents(model, px.to(device))

    if masks is not None:
        without = dataset.prepare_masks()
        source = f"mask images in {d.mask_path}" if d.mask_path else "the images' transparency"
        if without == index.num_images:  # surely a mistake (a wrong folder, images flattened to RGB)
            raise DatasetError(f"training.masked_loss: none of the {without} images has a mask ({source})",
                               "dataset_no_masks", count=without,
                               source=d.mask_path or "alpha")
        cb.on_log(f"masked loss from {source}: {index.num_images - without} of {index.num_images} images have a mask"
                  + (f"; {without} have none and are learned whole" if without else ""))
    if buckets:
        cb.on_log(dataset.assignment.report())
    disk = None
    if t.cache_latents or t.cache_latents_to_disk:
        if t.cache_latents_to_disk:
            downscale = 2 ** (len(model.vae.config.block_out_channels) - 1)
            disk = DiskLatentCache(vae_fingerprint(model.vae), downscale)
        cb.on_log("caching latents" + (f" (disk: {disk.folder})" if disk else ""))
        dataset.cache_latents(encode, disk=disk)
        if disk:
            cb.on_log(f"latent cache: {disk.hits} reused, {disk.misses} encoded, {disk.rebuilt} rebuilt")
    validation = None
    if validation_items:  # encoded now, while the VAE is still on the device
        validation = build_validation_set(cfg, model, validation_items, encode, buckets, objective)
        cb.on_log(f"validation loss on {len(validation)} images the training never sees "
                  f"({len(validation.timesteps)} fixed timesteps each)")
    te_cache = None
    if caches_text_encoder_outputs(cfg, model.spec):
        te_cache = TextEncoderCache()
        te_cache.build(dataset.captions() + (validation.captions if validation else []),
                       caption_encoder(model, t.clip_skip))
        cb.on_log(f"text-encoder outputs cached for {len(te_cache)} distinct captions")
    sampler = BucketBatchSampler(dataset.bucket_keys(), t.batch_size, t.seed, flip=cfg.dataset.flip_aug,
                                 num_processes=num_processes, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    return DataSetup(dataset, loader, te_cache, validation)
