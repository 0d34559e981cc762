"""kohya ``ss_*`` and SAI ``modelspec.*`` metadata for a LoRA file.

Why these exact keys: A1111's LoRA tab, Civitai's uploader and ComfyUI's info nodes read them;
all values are strings (safetensors metadata is str -> str).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from engine.config.job import JobConfig, TrainingConfig
from engine.data.folder import DatasetIndex
from engine.export.hashes import cached_sha256, legacy_hash
from engine.methods import method_of
from engine.models import families


def modelspec_architecture(family: str, prediction_type: str) -> str:
    """SAI model-spec names; SD2 is split by parameterization (768-v vs 512 epsilon)."""
    return families.modelspec_architecture(family, prediction_type)


@dataclass
class RunInfo:
    """What only the running job knows, as opposed to what the config says."""
    session_id: int
    started_at: float  # unix time
    family: str
    prediction_type: str
    base_model_name: str
    base_model_hash: str           # sha256 of the base's weights file (kohya: ss_new_sd_model_hash)
    optimizer: str
    num_batches_per_epoch: int
    mixed_precision: str
    num_reg_images: int = 0
    reg_dataset_dirs: dict | None = None
    bucket_counts: dict | None = None  # {(w, h): entries per epoch}
    base_model_legacy_hash: str = ""  # A1111's old short hash of that file (kohya: ss_sd_model_hash)
    num_processes: int = 1
    vae_name: str = ""  # a separate VAE's file or folder name (kohya: ss_vae_name); "" = the base's own
    vae_hash: str = ""  # sha256 of its weights file (kohya: ss_new_vae_hash)
    vae_legacy_hash: str = ""  # A1111's old short hash of it (kohya: ss_vae_hash)
    validation_loss: float | None = None  # of the weights being saved (engine.training.validation)
    num_validation_images: int = 0


VALIDATION_LOSS_KEY = "loraforge_validation_loss"  # sd-scripts logs it but writes no key for it


EMA_KEY = "loraforge_ema_decay"  # the file holds the weights' moving average, with this decay


def run_metadata(t: TrainingConfig, validation_loss: float | None) -> dict[str, str]:
    """What every saved file says of how its weights were taken: the moving average (and its
    decay) when training.ema, and the weights' validation loss when the job measures one."""
    return ({EMA_KEY: str(t.ema_decay)} if t.ema else {}) | (
        {} if validation_loss is None else {VALIDATION_LOSS_KEY: f"{validation_loss:.6f}"})


def vae_facts(info) -> dict[str, str]:
    """RunInfo's VAE fields from engine.models.vae.VaeInfo (None: the base's own VAE)."""
    if info is None:
        return {}
    weights = info.weights if info.weights is not None and info.weights.is_file() else None
    return {"vae_name": info.name, "vae_hash": cached_sha256(weights) if weights else "",
            "vae_legacy_hash": legacy_hash(weights) if weights else ""}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def bucket_info(counts: dict) -> dict:
    """kohya's ``ss_bucket_info`` shape: numbered buckets with resolution [w, h] and count."""
    buckets = {str(i): {"resolution": [w, h], "count": n} for i, ((w, h), n) in enumerate(sorted(counts.items()))}
    return {"buckets": buckets, "mean_img_ar_error": 0.0}


def lora_metadata(cfg: JobConfig, data: DatasetIndex, run: RunInfo, epoch: int, step: int,
                  finished_at: float) -> dict[str, str]:
    t, o, net, res = cfg.training, cfg.optimizer, cfg.network, cfg.dataset.resolution
    module, network_args = method_of(net).kohya_network(net)  # kohya's ss_network_module / _args
    meta = {
        "ss_output_name": cfg.output.name,
        "ss_session_id": str(run.session_id),
        "ss_training_started_at": str(run.started_at),
        "ss_training_finished_at": str(finished_at),
        "ss_seed": str(t.seed),
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_epochs": str(t.epochs),
        "ss_max_train_steps": str(t.max_steps or run.num_batches_per_epoch * t.epochs),
        "ss_num_train_images": str(data.num_train_images),
        "ss_num_reg_images": str(run.num_reg_images),
        "ss_num_batches_per_epoch": str(run.num_batches_per_epoch),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_total_batch_size": str(t.batch_size * run.num_processes * t.gradient_accumulation_steps),
        "ss_learning_rate": str(o.lr),
        "ss_unet_lr": str(o.unet_lr if o.unet_lr is not None else o.lr),
        "ss_text_encoder_lr": str(0.0 if net.train_unet_only else
                                  (o.text_encoder_lr if o.text_encoder_lr is not None else o.lr)),
        "ss_lr_scheduler": cfg.scheduler.type,
        "ss_lr_warmup_steps": str(cfg.scheduler.warmup_steps),
        "ss_optimizer": run.optimizer,
        "ss_max_grad_norm": str(o.max_grad_norm),
        "ss_network_module": module,
        "ss_network_dim": str(net.dim),
        "ss_network_alpha": str(net.alpha),
        "ss_network_dropout": str(net.dropout),
        "ss_network_args": json.dumps(network_args),
        "ss_network_train_unet_only": str(net.train_unet_only),
        "ss_mixed_precision": run.mixed_precision,
        "ss_full_fp16": "False",
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_cache_latents": str(t.cache_latents),
        "ss_base_model_version": families.family(run.family).kohya_version,
        "ss_v2": str(run.family == "sd2"),  # kohya's flag names SD 2.x itself
        "ss_v_parameterization": str(run.prediction_type == "v_prediction"),
        "ss_clip_skip": str(t.clip_skip),
        "ss_resolution": f"({res}, {res})",
        "ss_sd_model_name": run.base_model_name,
        "ss_new_sd_model_hash": run.base_model_hash,
        "ss_sd_model_hash": run.base_model_legacy_hash,
        **({"ss_vae_name": run.vae_name, "ss_vae_hash": run.vae_legacy_hash, "ss_new_vae_hash": run.vae_hash}
           if run.vae_name else {}),
        **noise_and_loss_metadata(t),
        **run_metadata(t, run.validation_loss),
        # sd-scripts' validation keys ("None" for what is off, as it writes them)
        "ss_num_validation_images": str(run.num_validation_images),
        "ss_validation_split": str(cfg.dataset.validation_split),
        "ss_validation_seed": str(cfg.dataset.validation_seed),
        "ss_validate_every_n_epochs": str(t.validate_every_n_epochs or None),
        "ss_validate_every_n_steps": str(t.validate_every_n_steps or None),
        "ss_tag_frequency": json.dumps(data.tag_frequency(), ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(data.dataset_dirs(), ensure_ascii=False),
        "ss_bucket_info": json.dumps(bucket_info(run.bucket_counts or {(res, res): data.num_train_images})),
        "ss_enable_bucket": str(cfg.dataset.enable_bucket),
        "ss_min_bucket_reso": str(cfg.dataset.min_bucket_reso),
        "ss_max_bucket_reso": str(cfg.dataset.max_bucket_reso),
        "ss_bucket_no_upscale": str(cfg.dataset.bucket_no_upscale),
        "ss_caption_tag_dropout_rate": str(cfg.dataset.tag_dropout_rate),
        "ss_prior_loss_weight": str(cfg.dataset.prior_loss_weight),
        "ss_caption_dropout_rate": str(cfg.dataset.caption_dropout_rate),
        "ss_flip_aug": str(cfg.dataset.flip_aug),
        "ss_shuffle_caption": str(cfg.dataset.shuffle_caption),
        "ss_keep_tokens": str(cfg.dataset.keep_tokens),
        **({"ss_reg_dataset_dirs": json.dumps(run.reg_dataset_dirs, ensure_ascii=False)}
           if run.reg_dataset_dirs else {}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{modelspec_architecture(run.family, run.prediction_type)}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": cfg.output.name,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": _iso(finished_at),
        "modelspec.prediction_type": run.prediction_type,
        "modelspec.trigger_phrase": cfg.output.trigger_phrase,
        "modelspec.author": cfg.output.author,
        "modelspec.description": cfg.output.description,
    }
    if families.family(run.family).denoiser == "flux":
        meta |= flux_metadata(t)
        # (a transformer has no convolutions: a conv rank in the job trained nothing)
        meta["ss_network_args"] = json.dumps({k: v for k, v in network_args.items() if not k.startswith("conv_")})
        meta.pop("modelspec.prediction_type")  # (kohya leaves it out for Flux: flow, not a DDPM type)
    return meta


def flux_metadata(t: TrainingConfig) -> dict[str, str]:
    """What kohya's Flux LoRAs say differently: their network module, the original
    implementation, frozen text encoders and the flow-matching settings they were trained with."""
    return {"ss_network_module": "networks.lora_flux", "ss_network_train_unet_only": "True",
            "ss_text_encoder_lr": "0.0", "modelspec.implementation": "https://github.com/black-forest-labs/flux",
            "ss_timestep_sampling": t.timestep_sampling, "ss_discrete_flow_shift": str(t.discrete_flow_shift),
            "ss_guidance_scale": str(t.flux_guidance), "ss_model_prediction_type": "raw"}


# the noise and loss options under sd-scripts' keys: job field (training.*) -> metadata key
NOISE_AND_LOSS_KEYS = {"multires_noise_iterations": "ss_multires_noise_iterations",
                       "multires_noise_discount": "ss_multires_noise_discount",
                       "ip_noise_gamma": "ss_ip_noise_gamma", "zero_terminal_snr": "ss_zero_terminal_snr",
                       "debiased_estimation_loss": "ss_debiased_estimation", "loss_type": "ss_loss_type",
                       "huber_schedule": "ss_huber_schedule", "huber_c": "ss_huber_c",
                       "huber_scale": "ss_huber_scale", "masked_loss": "ss_masked_loss"}
OFF_IS_NONE = ("multires_noise_iterations", "ip_noise_gamma")  # sd-scripts writes "None" when 0/off
TIMESTEP_RANGE_KEY = "loraforge_timestep_range"  # sd-scripts has the options but no key for them


def noise_and_loss_metadata(t: TrainingConfig) -> dict[str, str]:
    """The noise and loss options under sd-scripts' keys, written as sd-scripts writes them
    ("None" for an option that is off); the timestep range has no sd-scripts key and is ours."""
    meta = {"ss_noise_offset": str(t.noise_offset), "ss_min_snr_gamma": str(t.min_snr_gamma)}
    for name, key in NOISE_AND_LOSS_KEYS.items():
        value = getattr(t, name)
        meta[key] = str((value or None) if name in OFF_IS_NONE else value)
    meta[TIMESTEP_RANGE_KEY] = f"{t.min_timestep}-{t.max_timestep}"
    return meta
