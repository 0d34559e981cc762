"""The reference architectures of Stable Diffusion 1.5, 2.x (512 px epsilon, 768 px
v-prediction), SDXL base and Flux.1 [dev], as diffusers config folders, so a single-file checkpoint (an
A1111 / Civitai ``.safetensors``) loads with no network at all.

A single file holds weights, not the architecture: its layer sizes, scheduler and tokenizer
come from a config folder. The values below are the published architectures (layer sizes of
the UNet, VAE and CLIP text encoders, the training noise schedule, each tokenizer's padding);
everything not listed takes the diffusers / transformers class default. The folder is written
once into LoRA Forge's cache (tokenizers rebuilt offline from CLIP's BPE vocabulary).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_NOISE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
          "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
        "sample_size": 512, "scaling_factor": 0.18215}
_UNET_SD = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "in_channels": 4, "out_channels": 4,
            "layers_per_block": 2, "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
            "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False}
_CLIP_L = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
           "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "hidden_act": "quick_gelu",
           "projection_dim": 768, "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-5,
           "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_OPEN_CLIP_H = {**_CLIP_L, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512}  # SD 2 uses 23 of 24 layers
_OPEN_CLIP_BIG_G = {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 1280,
                    "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
                    "hidden_act": "gelu", "projection_dim": 1280}
_EOS, _BANG = "<|endoftext|>", "!"  # SD 1.x pads with the end token, OpenCLIP's encoders with "!"
# Flux.1 [dev]: the transformer, its 16-channel VAE and T5 v1.1 XXL (the encoder only)
_FLUX_TRANSFORMER = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
                     "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                     "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                     "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
_FLUX_VAE = {**_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
             "use_quant_conv": False, "use_post_quant_conv": False}
_T5_XXL = {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 4096, "d_ff": 10240, "d_kv": 64,
           "num_heads": 64, "num_layers": 24, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
           "is_gated_act": True, "dense_act_fn": "gelu_new", "relative_attention_num_buckets": 32,
           "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "is_encoder_decoder": False, "use_cache": False}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd15": {"pipeline": "StableDiffusionPipeline", "unet": {**_UNET_SD, "attention_head_dim": 8,
             "cross_attention_dim": 768, "sample_size": 64}, "vae": _VAE, "text_encoder": _CLIP_L,
             "tokenizer_pad": _EOS, "scheduler": ("PNDMScheduler", {**_NOISE, "skip_prk_steps": True,
                                                                  "prediction_type": "epsilon"})},
    "sd2-512": {"pipeline": "StableDiffusionPipeline", "unet": {
        **_UNET_SD, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True,
        "sample_size": 64}, "vae": _VAE, "text_encoder": _OPEN_CLIP_H, "tokenizer_pad": _BANG,
        "scheduler": ("DDIMScheduler", {**_NOISE, "prediction_type": "epsilon"})},
    "sd2-768-v": {"pipeline": "StableDiffusionPipeline", "unet": {
        **_UNET_SD, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True,
        "sample_size": 96, "upcast_attention": True}, "vae": {**_VAE, "sample_size": 768},
        "text_encoder": _OPEN_CLIP_H, "tokenizer_pad": _BANG,
        "scheduler": ("DDIMScheduler", {**_NOISE, "prediction_type": "v_prediction"})},
    "sdxl": {"pipeline": "StableDiffusionXLPipeline", "unet": {
        **_UNET_SD, "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
        "up_block_types": ["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], "transformer_layers_per_block": [1, 2, 10],
        "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "sample_size": 128},
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L, "tokenizer_pad": _EOS, "text_encoder_2": _OPEN_CLIP_BIG_G, "tokenizer_2_pad": _BANG,
        "scheduler": ("EulerDiscreteScheduler", {
            **{k: v for k, v in _NOISE.items() if k not in ("clip_sample", "set_alpha_to_one")},
            "prediction_type": "epsilon", "timestep_spacing": "leading", "interpolation_type": "linear"})},
    # no tokenizer_2: T5's vocabulary ships in no offline wheel; a real Flux folder brings its own
    "flux1-dev": {"pipeline": "FluxPipeline", "transformer": _FLUX_TRANSFORMER, "vae": _FLUX_VAE,
                  "text_encoder": _CLIP_L, "tokenizer_pad": _EOS, "text_encoder_2": _T5_XXL,
                  "scheduler": ("FlowMatchEulerDiscreteScheduler", {
                      "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                      "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096})},
}


def _flux_files(spec: dict[str, Any]) -> dict[str, Any]:
    sched_class, sched = spec["scheduler"]
    index = {"_class_name": spec["pipeline"], "scheduler": ["diffusers", sched_class],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"]}
    return {"model_index.json": index, "transformer/config.json": spec["transformer"],
            "vae/config.json": spec["vae"], "text_encoder/config.json": spec["text_encoder"],
            "text_encoder_2/config.json": spec["text_encoder_2"],
            "scheduler/scheduler_config.json": {"_class_name": sched_class, **sched}}


def _files(arch: str) -> dict[str, Any]:
    """Relative path -> JSON content of the config folder (tokenizers are added separately)."""
    spec = ARCHITECTURES[arch]
    if "transformer" in spec:
        return _flux_files(spec)
    sched_class, sched = spec["scheduler"]
    index = {"_class_name": spec["pipeline"], "scheduler": ["diffusers", sched_class],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", spec["text_encoder"]["architectures"][0]],
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    files = {"unet/config.json": spec["unet"], "vae/config.json": spec["vae"],
             "text_encoder/config.json": spec["text_encoder"],
             "scheduler/scheduler_config.json": {"_class_name": sched_class, **sched}}
    if "text_encoder_2" in spec:
        index |= {"text_encoder_2": ["transformers", spec["text_encoder_2"]["architectures"][0]],
                  "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True}
        files["text_encoder_2/config.json"] = spec["text_encoder_2"]
    else:
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    files["model_index.json"] = index
    return files


def reference_config_dir(arch: str) -> Path:
    """The diffusers config folder of ``arch`` (a key of ARCHITECTURES), written on first use into
    the cache; a folder whose content differs (an older version) is rewritten."""
    from engine.models.clip_tokenizer import write_clip_tokenizer_files
    from engine.paths import cache_dir

    files = _files(arch)
    spec = ARCHITECTURES[arch]
    tokenizers = {"tokenizer": spec["tokenizer_pad"], **({"tokenizer_2": spec["tokenizer_2_pad"]}
                                                         if "tokenizer_2_pad" in spec else {})}
    stamp = hashlib.sha256(json.dumps([files, tokenizers], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "reference" / f"{arch}-{stamp}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}.", dir=target.parent))
    try:
        for rel, content in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(json.dumps(content, indent=2), encoding="utf-8")
        for folder, pad in tokenizers.items():
            write_clip_tokenizer_files(staging / folder, pad_token=pad)
        try:
            os.replace(staging, target)
        except OSError:  # another process wrote it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
