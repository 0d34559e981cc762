"""Save a diffusers SD 1.x, 2.x or SDXL model as one original-layout (CompVis/LDM/SGM) ``.safetensors`` file.

A1111, ComfyUI and most model sites expect DreamBooth results as a single checkpoint with the original
Stable Diffusion key names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``). This is the inverse of diffusers' single-file loader, so
``StableDiffusionPipeline.from_single_file(path, config=<diffusers folder>)`` gives back identical weights.
The mapping is computed from each model's config, so any block count / ``layers_per_block`` works
(tiny test models included). Every key must map; an unknown key raises instead of being dropped.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from engine.fileio import atomic_write

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
# SD 2.x's OpenCLIP ViT-H has 24 layers; its UNet reads the 23rd's output, so diffusers keeps 23.
SD2_FILE_TEXT_LAYERS = 24
LOGIT_SCALE = math.log(100.0)  # OpenCLIP's contrastive temperature, at its cap in trained models
# The noise schedule an SD 1.x / 2.x (LDM) checkpoint stores beside its weights.
LDM_SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                     "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2")

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_FIXED = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the first dotted component(s) of ``rest`` using ``table`` (longest match first)."""
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    return rest


def unet_key_to_original(key: str, config: Any) -> str:
    """Map one diffusers UNet2DConditionModel key to its LDM ``openaimodel.UNetModel`` name."""
    lpb = config.layers_per_block
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block lists have no original single-file layout")
    head, _, param = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        block, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":  # the downsampler occupies the slot after the block's layers
            return f"input_blocks.{1 + block * (lpb + 1) + lpb}.0.{rest.replace('conv.', 'op.', 1)}"
        slot = 1 + block * (lpb + 1) + idx
        if kind == "resnets":
            return f"input_blocks.{slot}.0.{_rename_head(rest, _UNET_RESNET)}"
        return f"input_blocks.{slot}.1.{rest}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, idx, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":  # resnet, attention, resnet -> middle_block.0 / .1 / .2
            return f"middle_block.{2 * idx}.{_rename_head(rest, _UNET_RESNET)}"
        return f"middle_block.{2 * idx + 1}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        block, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":  # sits after the resnet (and the attention, if the block has one)
            has_attn = "CrossAttn" in config.up_block_types[block]
            return f"output_blocks.{block * (lpb + 1) + lpb}.{2 if has_attn else 1}.{rest}"
        slot = block * (lpb + 1) + idx
        if kind == "resnets":
            return f"output_blocks.{slot}.0.{_rename_head(rest, _UNET_RESNET)}"
        return f"output_blocks.{slot}.1.{rest}"
    raise KeyError(f"no original single-file name for UNet key {key!r}")


def vae_key_to_original(key: str, num_blocks: int) -> str:
    """Map one diffusers AutoencoderKL key to its LDM ``AutoencoderKL`` name (decoder blocks are reversed)."""
    head, _, param = key.rpartition(".")
    if head in _VAE_FIXED:
        return f"{_VAE_FIXED[head]}.{param}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)|(post_)?quant_conv", head):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", key):
        block, kind, idx, rest = m[1], m[2], m[3], m[4]
        if kind == "downsamplers":
            return f"encoder.down.{block}.downsample.{rest}"
        return f"encoder.down.{block}.block.{idx}.{_rename_head(rest, {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key):
        block, kind, idx, rest = num_blocks - 1 - int(m[1]), m[2], m[3], m[4]
        if kind == "upsamplers":
            return f"decoder.up.{block}.upsample.{rest}"
        return f"decoder.up.{block}.block.{idx}.{_rename_head(rest, {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        part, kind, idx, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{part}.mid.block_{idx + 1}.{_rename_head(rest, {'conv_shortcut': 'nin_shortcut'})}"
        return f"{part}.mid.attn_{idx + 1}.{_rename_head(rest, _VAE_ATTN)}"
    raise KeyError(f"no original single-file name for VAE key {key!r}")


def text_key_to_original(key: str) -> str:
    """CLIP-L keys keep transformers' names under ``text_model.`` (newer transformers drop that prefix)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def open_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """transformers CLIP text model -> OpenCLIP names (SDXL's second encoder, SD 2.x's only one,
    in a single file): q/k/v fused into ``in_proj``, the projection stored transposed. The inverse
    of diffusers' converter; every weight must be used, or this raises.

    An SD 2.x encoder of the real size (23 layers, no projection) gets the three weights its
    checkpoints carry and no SD 2 consumer uses (the 24th layer, whose output the UNet skips, a
    projection and the logit scale), so A1111 and ComfyUI find the full key set they expect. The
    24th layer repeats the 23rd and the projection is the identity, as kohya sd-scripts writes."""
    sd = {(k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
          for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return sd[key]

    e, out = "text_model.", {}
    out["token_embedding.weight"] = take(f"{e}embeddings.token_embedding.weight")
    out["positional_embedding"] = take(f"{e}embeddings.position_embedding.weight")
    for suffix in ("weight", "bias"):
        out[f"ln_final.{suffix}"] = take(f"{e}final_layer_norm.{suffix}")
    if hasattr(text_encoder, "text_projection"):
        out["text_projection"] = take("text_projection.weight").T
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"{e}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for suffix in ("weight", "bias"):
            out[f"{dst}ln_1.{suffix}"] = take(f"{src}layer_norm1.{suffix}")
            out[f"{dst}ln_2.{suffix}"] = take(f"{src}layer_norm2.{suffix}")
            out[f"{dst}attn.in_proj_{suffix}"] = torch.cat(
                [take(f"{src}self_attn.{p}_proj.{suffix}") for p in "qkv"])
            out[f"{dst}attn.out_proj.{suffix}"] = take(f"{src}self_attn.out_proj.{suffix}")
            out[f"{dst}mlp.c_fc.{suffix}"] = take(f"{src}mlp.fc1.{suffix}")
            out[f"{dst}mlp.c_proj.{suffix}"] = take(f"{src}mlp.fc2.{suffix}")
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"no OpenCLIP single-file name for text encoder key {left[0]!r}")
    layers, dtype = text_encoder.config.num_hidden_layers, out["ln_final.weight"].dtype
    if not hasattr(text_encoder, "text_projection") and layers == SD2_FILE_TEXT_LAYERS - 1:
        last, unused = f"transformer.resblocks.{layers - 1}.", f"transformer.resblocks.{layers}."
        for key in [k for k in out if k.startswith(last)]:
            out[unused + key[len(last):]] = out[key].clone()
        out["text_projection"] = torch.eye(text_encoder.config.hidden_size, dtype=dtype)
    out["logit_scale"] = torch.tensor(LOGIT_SCALE, dtype=dtype)
    return out


def vae_original_state_dict(vae) -> dict[str, torch.Tensor]:
    """A diffusers VAE in the original layout, without the ``first_stage_model.`` prefix (the
    layout of the separate VAE files people download, e.g. vae-ft-mse-840000)."""
    num_blocks = len(vae.config.block_out_channels)
    out = {}
    for key, tensor in vae.state_dict().items():
        name = vae_key_to_original(key, num_blocks)
        if ".mid.attn_" in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convs
        out[name] = tensor
    return out


def to_original_state_dict(unet, vae, text_encoder, text_encoder_2=None) -> dict[str, torch.Tensor]:
    """Original-layout state dict for an SD 1.x model, SD 2.x (an OpenCLIP text encoder), or SDXL
    when ``text_encoder_2`` is given (tensors are detached views; no copies in fp32)."""
    open_clip = getattr(text_encoder.config, "hidden_act", "quick_gelu") != "quick_gelu"
    if text_encoder_2 is None and hasattr(text_encoder, "text_projection"):
        raise ValueError("a projected text encoder without a second one is neither SD 1.x, SD 2.x nor SDXL; "
                         "it has no original single-file layout")
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        if name in out:
            raise KeyError(f"two weights map to the same single-file key {name!r}")
        tensor = tensor.detach()
        out[name] = tensor if tensor.is_meta else tensor.cpu().contiguous()

    for key, tensor in unet.state_dict().items():
        put(UNET_PREFIX + unet_key_to_original(key, unet.config), tensor)
    for name, tensor in vae_original_state_dict(vae).items():
        put(VAE_PREFIX + name, tensor)
    if text_encoder_2 is None and open_clip:  # SD 2.x
        for key, tensor in open_clip_state_dict(text_encoder).items():
            put(SD2_TEXT_PREFIX + key, tensor)
        return out
    first = SDXL_TEXT_PREFIXES[0] if text_encoder_2 is not None else TEXT_PREFIX
    for key, tensor in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue  # written below, always as integers
        put(first + text_key_to_original(key), tensor)
    # CLIP-L's token positions: real checkpoints carry them as int64 0..76; a float or missing
    # copy is what community "fix position_ids" tools repair
    put(first + "text_model.embeddings.position_ids",
        torch.arange(text_encoder.config.max_position_embeddings, dtype=torch.int64)[None])
    if text_encoder_2 is not None:
        for key, tensor in open_clip_state_dict(text_encoder_2).items():
            put(SDXL_TEXT_PREFIXES[1] + key, tensor)
    return out


def ldm_schedule_buffers(schedule: Any) -> dict[str, torch.Tensor]:
    """The schedule tensors of an LDM checkpoint (``LDM_SCHEDULE_KEYS``) for a diffusers noise
    scheduler config, computed in float64 and stored as float32 as LDM does."""
    steps, start, end = schedule["num_train_timesteps"], schedule["beta_start"], schedule["beta_end"]
    if schedule["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    elif schedule["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"no LDM schedule for beta_schedule {schedule['beta_schedule']!r}")
    alphas = 1.0 - betas
    cumprod = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    variance = betas * (1.0 - prev) / (1.0 - cumprod)
    values = (betas, cumprod, prev, cumprod.sqrt(), (1.0 - cumprod).sqrt(), torch.log(1.0 - cumprod),
              (1.0 / cumprod).sqrt(), (1.0 / cumprod - 1).sqrt(), variance, torch.log(variance.clamp(min=1e-20)),
              betas * prev.sqrt() / (1.0 - cumprod), (1.0 - prev) * alphas.sqrt() / (1.0 - cumprod))
    return {k: v.to(torch.float32) for k, v in zip(LDM_SCHEDULE_KEYS, values)}


def _component(source: Any, name: str):
    if isinstance(source, dict):
        return source[name]
    return getattr(source, name)


def save_single_file(components: Any, path: Path, half: bool = False,
                     metadata: dict[str, str] | None = None, noise_schedule: Any = None) -> Path:
    """Write ``components`` (dict, pipeline or anything with ``unet``/``vae``/``text_encoder``) atomically.

    ``half=True`` stores floating tensors as fp16 (half the size; what most shared checkpoints use).
    ``noise_schedule`` (a diffusers scheduler config) adds an SD 1.x / 2.x checkpoint's schedule
    tensors, so the file has the key set of the originals (SDXL files have none).
    """
    from safetensors.torch import save_file

    te2 = components.get("text_encoder_2") if isinstance(components, dict) else getattr(
        components, "text_encoder_2", None)
    state = to_original_state_dict(*(_component(components, n) for n in ("unet", "vae", "text_encoder")),
                                   text_encoder_2=te2)
    if noise_schedule is not None and te2 is None:
        state |= ldm_schedule_buffers(noise_schedule)
    if half:
        state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    from engine import VERSION_KEY, __version__

    meta = {"format": "pt", VERSION_KEY: __version__, **(metadata or {})}
    return atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=meta))
