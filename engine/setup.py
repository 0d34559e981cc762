"""Everything the loop needs, built from a JobConfig: model, LoRA, data, optimizer, schedule.

Split from trainer.py so the loop itself stays short enough to read in one screen.
"""
from __future__ import annotations

import math
from collections import Counter
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from engine.te_cache import TextEncoderCache

from engine.callbacks import Callbacks
from engine.config import JobConfig, trains_text_encoder
from engine.data.dataset import TrainingSamples
from engine.data.class_images import ensure_class_images
from engine.data.folder import DatasetIndex
from engine.data_setup import build_data, encode_latents, scan_job_dataset, scan_reg_dataset
from engine.export.hashes import cached_sha256, legacy_hash
from engine.export.metadata import RunInfo, vae_facts
from engine.models.loader import LoadedModel, load_sd_components
from engine.method_setup import attach_method
from engine.networks.textual_inversion import TextualInversion, lr_at, parse_lr_schedule
from engine.optim import (OptimizerUnavailable, build_optimizer, build_scheduler, describe_optimizer,
                          param_groups)

from engine.i18n import Explained


class SetupError(Explained, RuntimeError):
    """The job cannot start on this machine; the message says why and what to change."""


@dataclass
class TrainingSetup:
    model: LoadedModel
    index: DatasetIndex
    dataset: TrainingSamples
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: list[torch.nn.Parameter]
    train_te: bool
    total_steps: int
    num_batches_per_epoch: int
    weight_dtype: torch.dtype
    run: RunInfo
    te_cache: TextEncoderCache | None = None
    ti: TextualInversion | None = None
    network: torch.nn.Module | None = None  # LyCORIS / hypernetwork modules hooked into the base


def resolve_mixed_precision(requested: str, cb: Callbacks) -> str:
    """fp16 autocast needs CUDA; on a CPU fall back to fp32 and say so rather than crash."""
    if requested == "fp16" and not torch.cuda.is_available():
        cb.on_log("mixed_precision fp16 needs a CUDA GPU; training in fp32 on this machine")
        return "no"
    return requested


def _configure_memory(cfg: JobConfig, model: LoadedModel, train_te: bool) -> None:
    if cfg.training.attention == "xformers":
        try:
            model.unet.enable_xformers_memory_efficient_attention()
        except Exception as err:  # xformers missing or no CUDA build
            raise SetupError("training.attention = 'xformers' but xformers cannot be used here "
                             f"({err}); use 'sdpa' (PyTorch's built-in, the default)", "xformers") from None
    if cfg.training.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        for te in (model.text_encoders if train_te else []):
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_training(cfg: JobConfig, accelerator: Accelerator, cb: Callbacks,
                   model: LoadedModel | None = None) -> TrainingSetup:
    """``model`` lets a caller that already holds the base in memory (benchmarks, the app's
    cached base) skip loading it again; it is modified in place (LoRA layers are injected)."""
    t = cfg.training
    index = scan_job_dataset(cfg, cb)  # before loading the model: a bad dataset fails fast
    if model is None:
        model = load_sd_components(cfg.model.base, family=cfg.model.family,
                                   local_files_only=cfg.model.local_files_only,
                                   allow_pickle=cfg.model.allow_pickle,
                                   single_file_config=(Path(cfg.model.config_dir)
                                                       if cfg.model.config_dir else None),
                                   vae=cfg.model.vae)
    prediction_type = (model.prediction_type if cfg.model.prediction_type == "auto"
                       else cfg.model.prediction_type)
    model.noise_scheduler.register_to_config(prediction_type=prediction_type)
    model.prediction_type = prediction_type
    d = cfg.dataset
    if d.num_class_images:
        made = ensure_class_images(model, Path(d.reg_path), d.class_prompt, d.num_class_images,
                                   d.resolution, t.seed, cfg.sample.steps, cfg.sample.cfg_scale,
                                   device=accelerator.device)
        if made:
            cb.on_log(f"generated {made} class images for '{d.class_prompt}' in {d.reg_path}")
    reg_index = scan_reg_dataset(cfg, cb)
    cb.on_log(f"base model: {model.name} ({model.family}, {prediction_type}); "
              f"{index.num_images} images, {index.num_train_images} per epoch with repeats"
              + (f"; {reg_index.num_images} regularization images" if reg_index else ""))

    if model.is_sdxl and d.resolution < 768:
        cb.on_log(f"note: SDXL models were trained at 1024 px; dataset.resolution = {d.resolution} "
                  "usually gives blurry, low-detail results (1024 is the usual choice)")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision,
                                                                      torch.float32)
    train_te = trains_text_encoder(cfg.network)
    for m in (model.unet, model.vae, *model.text_encoders):
        m.requires_grad_(False)
        m.to(accelerator.device)
    frozen_half = cfg.network.type not in ("textual_inversion", "dreamartist", "dreambooth")
    if weight_dtype != torch.float32 and frozen_half:  # frozen base in half precision; the VAE
        for m in (model.unet, *model.text_encoders):   # stays fp32 (fp16 SD VAEs make NaNs)
            m.to(dtype=weight_dtype)
    try:
        parts = attach_method(cfg, model, train_te, accelerator.device)
    except ValueError as err:  # MethodError, a TI token clash, a LyCORIS preset matching nothing
        raise SetupError.wrapping(err) from None
    unet_params, te_params, ti, network = parts.unet_params, parts.te_params, parts.ti, parts.network
    if cfg.network.type == "hypernetwork":
        from engine.i18n import EN
        from engine.networks.hypernetwork import comfyui_differences

        net = cfg.network
        for key in comfyui_differences(net.activation, net.layer_norm, net.activate_output):
            cb.on_log("note: " + EN(f"warn.{key}", activation=net.activation))
    if cfg.network.type == "hypernetwork" and not cfg.network.lr_schedule and cfg.optimizer.lr > 1e-4:
        cb.on_log(f"note: hypernetworks are usually trained at lr 5e-6 .. 1e-5 (A1111's default "
                  f"range); {cfg.optimizer.lr:g} may overshoot on a real model")
    _configure_memory(cfg, model, train_te)

    data = build_data(cfg, model, accelerator.device, cb, index, reg_index,
                      accelerator.num_processes, accelerator.process_index)
    dataset, loader = data.dataset, data.loader
    if t.offload_after_caching and (dataset.has_latent_cache or data.te_cache):
        if dataset.has_latent_cache:
            model.vae.to("cpu")
        if data.te_cache is not None:
            for te in model.text_encoders:
                te.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    num_batches = len(loader)
    steps_per_epoch = math.ceil(num_batches / t.gradient_accumulation_steps)
    total = steps_per_epoch * t.epochs
    if t.max_steps:
        total = min(total, t.max_steps)

    trainable = unet_params + te_params
    try:
        groups = param_groups(unet_params, te_params, cfg.optimizer)
        if ti is not None:
            groups[0]["weight_decay"] = 0.0  # decay would pull our vectors toward zero
        optimizer = build_optimizer(cfg.optimizer, groups, accelerator.device.type)
    except OptimizerUnavailable as err:
        raise SetupError.wrapping(err) from None
    except (RuntimeError, ImportError) as err:  # e.g. an optional optimizer package missing
        raise SetupError(str(err), "optimizer_failed", error=err) from None
    scheduler = build_scheduler(cfg.scheduler, optimizer, total, accelerator.num_processes)
    if getattr(cfg.network, "lr_schedule", None):  # A1111 syntax (TI, hypernetwork)
        schedule = parse_lr_schedule(cfg.network.lr_schedule)
        base_lr = optimizer.param_groups[0]["lr"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_at(schedule, step) / base_lr)

    weights = base_weights_file(model)
    run = RunInfo(session_id=int(torch.randint(0, 2**31 - 1, (1,)).item()), started_at=time.time(),
                  family=model.family, prediction_type=prediction_type,
                  base_model_name=model.name, base_model_hash=cached_sha256(weights) if weights else "",
                  base_model_legacy_hash=legacy_hash(weights) if weights else "",
                  **vae_facts(model.vae_info),
                  num_processes=accelerator.num_processes,
                  optimizer=describe_optimizer(optimizer, cfg.optimizer),
                  num_batches_per_epoch=num_batches, mixed_precision=accelerator.mixed_precision,
                  num_reg_images=dataset.num_reg_images,
                  reg_dataset_dirs=reg_index.dataset_dirs() if reg_index else None,
                  bucket_counts=dict(Counter(dataset.bucket_keys())))
    return TrainingSetup(model, index, dataset, loader, optimizer, scheduler, trainable, train_te,
                         total, num_batches, weight_dtype, run, data.te_cache, ti, network)


def base_weights_file(model: LoadedModel) -> Path | None:
    """The file the base model's hashes are taken of: a single-file checkpoint itself; for a
    diffusers folder (or a hub snapshot) its UNet weights, the part a LoRA is made for (kohya
    hashes only single files and leaves a folder's hashes empty)."""
    if model.source_kind == "single_file":
        return Path(model.path)
    unet = Path(model.path) / "unet"
    found = sorted(unet.glob("diffusion_pytorch_model*.safetensors")) if unet.is_dir() else []
    return found[0] if len(found) == 1 else None


__all__ = ["SetupError", "TrainingSetup", "build_training", "encode_latents"]
