"""Everything the loop needs, built from a JobConfig: model, LoRA, data, optimizer, schedule.

Split from trainer.py so the loop itself stays short enough to read in one screen.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from engine.config.job import JobConfig
from engine.config.lr_schedule import lr_at, parse_lr_schedule
from engine.data.class_images import ensure_class_images
from engine.data.dataset import TrainingSamples
from engine.data.folder import DatasetIndex
from engine.data.prior_images import PriorRecipe, ensure_prior_images, prior_prompts
from engine.export.hashes import cached_sha256, legacy_hash
from engine.export.metadata import RunInfo, vae_facts
from engine.generate.sampling_defaults import for_job
from engine.i18n import Explained
from engine.methods import method_of, methods
from engine.models.loader import LoadedModel, load_job_base
from engine.training.callbacks import Callbacks
from engine.training.data_setup import (
    build_data,
    encode_latents,
    reg_root,
    scan_reg_dataset,
    scan_validation,
    split_job_dataset,
    uses_prior_images,
)
from engine.training.losses import zero_terminal_snr
from engine.training.objective import DiffusionObjective, FlowObjective, Objective
from engine.training.optim import (
    OptimizerUnavailable,
    build_optimizer,
    build_scheduler,
    describe_optimizer,
    lr_multipliers,
    param_groups,
)
from engine.training.te_cache import TextEncoderCache
from engine.training.validation import ValidationSet


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
    validation: ValidationSet | None = None  # held-out images, fixed noise (engine.training.validation)
    ema: Any = None  # diffusers' EMAModel over ``trainable`` when training.ema (engine.training.ema)
    state: Any = None  # the method's own object (TextualInversion, a LyCORIS or hypernetwork net)
    network: torch.nn.Module | None = None  # LyCORIS / hypernetwork modules hooked into the base
    method: Any = None  # engine.methods.TrainingMethod
    objective: Any = None  # engine.training.objective: what the denoiser learns (DDPM or flow)


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


# DDPM-only options: what each means for a rectified-flow model is not defined
_FLUX_REFUSED = {"min_snr_gamma": None, "debiased_estimation_loss": False, "zero_terminal_snr": False,
                 "min_timestep": 0, "max_timestep": 1000, "clip_skip": 1}


def _check_flux_job(cfg: JobConfig) -> None:
    t = cfg.training
    bad = [f"training.{name}" for name, off in _FLUX_REFUSED.items() if getattr(t, name) != off]
    if t.loss_type in ("huber", "smooth_l1") and t.huber_schedule == "snr":
        bad.append("training.huber_schedule = \"snr\"")
    if cfg.model.prediction_type != "auto":
        bad.append("model.prediction_type")
    if bad:
        raise SetupError(f"{', '.join(bad)}: for noise-prediction (UNet) models only; Flux.1 is a flow model "
                         "(leave them at their defaults)", "setup_flux_option", options=", ".join(bad))


def _check_quantize(cfg: JobConfig, model: LoadedModel, dtype: torch.dtype, device: torch.device) -> None:
    """training.quantize_base can run here: a Flux base, and bitsandbytes' layers working on
    this device (checked before anything of the base goes to the GPU)."""
    from engine.models import flux
    from engine.models.quantize import QuantizationUnavailable, probe

    kind = cfg.training.quantize_base
    if kind == "none":
        return
    if model.spec.denoiser != "flux":
        raise SetupError(f"training.quantize_base = \"{kind}\" is for Flux.1 (its 12B transformer); "
                         f"{model.spec.label} fits without it: set it to \"none\"", "setup_quantize_family",
                         kind=kind, family=model.spec.label)
    try:
        for k in {kind, flux.T5_QUANT}:
            probe(k, device, dtype)
    except QuantizationUnavailable as err:
        raise SetupError(f"training.quantize_base = \"{kind}\" cannot be used here: {err}. Install bitsandbytes "
                         "0.45 or newer for this GPU, or set it to \"none\"", "setup_quantize_unavailable",
                         kind=kind, error=err) from None


def _quantize_frozen_base(cfg: JobConfig, model: LoadedModel, dtype: torch.dtype, device: torch.device,
                          cb: Callbacks) -> None:
    """training.quantize_base (checked by :func:`_check_quantize`): Flux's transformer blocks in
    int8 / NF4 (parked off the GPU until the text encoders have cached) and T5 in int8, before
    the LoRA wraps them."""
    from engine.models import flux

    kind = cfg.training.quantize_base
    if kind == "none":
        return
    done = flux.quantize_frozen(model, kind, dtype, device, park=torch.device("cpu"))
    cb.on_log(f"frozen base quantized with bitsandbytes: transformer blocks {kind} ({_size(done.before)} -> "
              f"{_size(done.after)}), T5 {flux.T5_QUANT}"
              + ("; on a CPU this saves memory, not time" if device.type == "cpu" else ""))


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _prior_images(cfg: JobConfig, model: LoadedModel, index: DatasetIndex, drawing, device, cb: Callbacks) -> None:
    """dataset.prior_preservation: the base draws the captions without the trigger word(s)."""
    d, trigger = cfg.dataset, cfg.output.trigger_phrase
    root = reg_root(cfg)
    assert root is not None
    prompts = prior_prompts(index, trigger)
    if not prompts:
        cb.on_log(f"prior preservation is off for this run: none of the {index.num_images} captions contains the "
                  f"trigger '{trigger}' (add the trigger word to them)")
        return  # (the prompts to keep too: without the trigger the add-on is meant to change every prompt)
    if len(prompts) < index.num_images:
        cb.on_log(f"prior preservation: {index.num_images - len(prompts)} of {index.num_images} captions do "
                  f"not contain the trigger '{trigger}' and get no base image (add the trigger word to them)")
    recipe = PriorRecipe(model.name, d.resolution, cfg.training.seed, drawing.steps, drawing.cfg_scale,
                         drawing.sampler)
    made = ensure_prior_images(model, root, prompts + d.keep_prompts, recipe, d.caption_extension, device=device)
    if made:
        cb.on_log(f"the base drew {made} prior-preservation images (your captions without '{trigger}'"
                  + (f", and {len(d.keep_prompts)} prompts to keep" if d.keep_prompts else "") + f") in {root}")


def build_training(cfg: JobConfig, accelerator: Accelerator, cb: Callbacks,
                   model: LoadedModel | None = None) -> TrainingSetup:
    """``model`` lets a caller that already holds the base in memory (benchmarks, the app's
    cached base) skip loading it again; it is modified in place (LoRA layers are injected)."""
    t = cfg.training
    index, held_out = split_job_dataset(cfg, cb)  # before loading the model: a bad dataset fails fast
    if model is None:
        model = load_job_base(cfg.model)
    prediction_type = (model.prediction_type if cfg.model.prediction_type == "auto"
                       else cfg.model.prediction_type)
    if model.spec.denoiser == "unet":  # (a flow model's scheduler has no prediction type)
        model.noise_scheduler.register_to_config(prediction_type=prediction_type)
    model.prediction_type = prediction_type
    if cfg.training.zero_terminal_snr and prediction_type != "v_prediction":
        raise SetupError("training.zero_terminal_snr needs a v-prediction model (SD 2.x 768-v, or set "
                         "model.prediction_type = \"v_prediction\" for a v-model): at the last timestep "
                         f"the input is pure noise, which a {prediction_type} model cannot predict",
                         "setup_ztsnr_epsilon", prediction=prediction_type)
    fam, method = model.spec, method_of(cfg.network)
    flux_only = [f"model.{name}" for name in ("clip_l", "t5xxl", "t5_tokenizer") if getattr(cfg.model, name)]
    if flux_only and fam.denoiser != "flux":
        raise SetupError(f"{', '.join(flux_only)}: Flux.1's text-encoder files; {fam.label} uses its own (leave "
                         "them empty)", "setup_flux_files", options=", ".join(flux_only), family=fam.label)
    if model.family not in method.families:  # before any work with the base (class images, devices)
        labels = ", ".join(n for n, m in methods().items() if model.family in m.families)
        raise SetupError(f"network.type = {method.type!r} is not available for {fam.label} yet "
                         f"({fam.label} trains {labels})", "method_family", kind=method.type,
                         family=fam.label, methods=labels)
    if fam.denoiser == "flux":
        _check_flux_job(cfg)
        model.unet.guidance = cfg.training.flux_guidance  # what the distilled model is conditioned on
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision,
                                                                      torch.float32)
    frozen_dtype = weight_dtype if method.keeps_base_half else torch.float32  # the frozen base's
    _check_quantize(cfg, model, frozen_dtype, accelerator.device)
    d = cfg.dataset
    drawing = for_job(cfg)  # what this base draws best with, unless the job says
    if d.num_class_images:
        made = ensure_class_images(model, Path(d.reg_path), d.class_prompt, d.num_class_images,
                                   d.resolution, t.seed, drawing.steps, drawing.cfg_scale,
                                   device=accelerator.device)
        if made:
            cb.on_log(f"generated {made} class images for '{d.class_prompt}' in {d.reg_path}")
    if uses_prior_images(cfg):
        _prior_images(cfg, model, index, drawing, accelerator.device, cb)
    elif d.prior_preservation:
        cb.on_log("prior preservation does nothing for an embedding (it only adds a word); skipped")
    reg_index = scan_reg_dataset(cfg, cb)
    validation_items = scan_validation(cfg, held_out, cb)
    cb.on_log(f"base model: {model.name} ({model.family}, {prediction_type}); "
              f"{index.num_images} images, {index.num_train_images} per epoch with repeats"
              + (f"; {reg_index.num_images} regularization images" if reg_index else ""))

    if d.resolution < fam.lowest_good_resolution:
        cb.on_log(f"note: {fam.label} models were trained at {fam.default_resolution} px; dataset.resolution = "
                  f"{d.resolution} usually gives blurry, low-detail results ({fam.default_resolution} is the "
                  "usual choice)")
    if cfg.training.zero_terminal_snr:  # after the base drew its prior images with its own schedule
        model.noise_scheduler = zero_terminal_snr(model.noise_scheduler)
        cb.on_log("noise schedule rescaled to zero terminal SNR (samples and saved checkpoints use it too)")
    train_te = method.trains_text_encoder(cfg.network) and fam.trains_text_encoders
    if fam.denoiser == "flux":
        cb.on_log(f"{fam.label}: the text encoders (CLIP-L, T5) stay frozen; the LoRA is on the transformer"
                  + ("; network.conv_dim is not used (a transformer has no convolutions)"
                     if getattr(cfg.network, "conv_dim", 0) else ""))
    for m in (model.unet, model.vae, *model.text_encoders):
        m.requires_grad_(False)
    for m in (model.vae, *model.text_encoders):  # the UNet joins them after caching (below)
        m.to(accelerator.device)
    if weight_dtype != torch.float32 and method.keeps_base_half:  # frozen base in half precision; the
        for m in (model.unet, *model.text_encoders):                # VAE stays fp32 (fp16 SD VAEs make NaNs)
            m.to(dtype=weight_dtype)
    _quantize_frozen_base(cfg, model, frozen_dtype, accelerator.device, cb)
    try:
        parts = method.attach(cfg, model, train_te, accelerator.device)
    except ValueError as err:  # a TI token clash, a LyCORIS preset matching nothing
        raise SetupError.wrapping(err) from None
    unet_params, te_params = parts.unet_params, parts.te_params
    from engine.i18n import EN

    notes = [EN(f"warn.{key}", **values) for key, values in method.warnings(cfg.network)]
    for note in notes + method.setup_notes(cfg):
        cb.on_log("note: " + note)
    _configure_memory(cfg, model, train_te)

    objective = objective_for(cfg, model)
    data = build_data(cfg, model, accelerator.device, cb, index, reg_index,
                      accelerator.num_processes, accelerator.process_index, validation_items, objective)
    dataset, loader = data.dataset, data.loader
    if t.offload_after_caching and (dataset.has_latent_cache or data.te_cache):
        if dataset.has_latent_cache:
            model.vae.to("cpu")
        if data.te_cache is not None:
            for te in model.text_encoders:
                te.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # only now: while latents and text-encoder outputs were cached the UNet (the largest part)
    # was not on the GPU, so caching's peak and training's peak do not add up on small cards
    model.unet.to(accelerator.device)
    num_batches = len(loader)
    steps_per_epoch = math.ceil(num_batches / t.gradient_accumulation_steps)
    total = steps_per_epoch * t.epochs
    if t.max_steps:
        total = min(total, t.max_steps)

    trainable = unet_params + te_params
    try:
        ratios = cfg.network.loraplus_ratios() if hasattr(cfg.network, "loraplus_ratios") else (1.0, 1.0)
        groups = param_groups(unet_params, te_params, cfg.optimizer,
                              lr_multipliers(unet_params, parts.up_params, ratios, parts.lr_scale))
        if method.no_weight_decay:
            groups[0]["weight_decay"] = 0.0  # decay would pull what it learns toward zero
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

    from engine.training.ema import make_ema

    ema = make_ema(trainable, t.ema_decay) if t.ema else None
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
                  num_validation_images=len(data.validation) if data.validation else 0,
                  reg_dataset_dirs=reg_index.dataset_dirs() if reg_index else None,
                  bucket_counts=dict(Counter(dataset.bucket_keys())))
    return TrainingSetup(model, index, dataset, loader, optimizer, scheduler, trainable, train_te,
                         total, num_batches, weight_dtype, run, data.te_cache, data.validation, ema,
                         parts.state, parts.network, method, objective)


def objective_for(cfg: JobConfig, model: LoadedModel) -> Objective:
    """Rectified flow for a flow model (Flux.1), noise prediction on its schedule otherwise."""
    t = cfg.training
    if model.spec.denoiser == "flux":
        return FlowObjective(t.timestep_sampling, t.discrete_flow_shift)
    return DiffusionObjective(model.noise_scheduler, model.prediction_type, t.min_timestep, t.max_timestep)


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
