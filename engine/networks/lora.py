"""LoRA (and LoCon-style conv LoRA) on the SD UNet and CLIP text encoder.

peft does the low-rank math (injection, dropout, scaling = alpha / r). We choose the target
modules the way kohya does and write the kohya key layout ourselves, because that is the format
A1111, ComfyUI and diffusers all read (diffusers' own converter writes ``lora_te1`` for SD1 and
forces alpha = rank, which would silently change the user's effective scale).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from engine.i18n import UserInputError
from engine.methods.lora import LoraNetworkConfig

ADAPTER = "default"
UNET_PREFIX, TE_PREFIX = "lora_unet", "lora_te"
_UNET_ATTN_PARENTS = ("Transformer2DModel",)
_UNET_CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
_TE_PARENTS = ("CLIPAttention", "CLIPMLP", "CLIPSdpaAttention")


@dataclass(frozen=True)
class Target:
    name: str  # module path inside the model, e.g. "down_blocks.0.attentions.0.proj_in"
    rank: int
    alpha: float
    conv: bool = False  # a 3x3 conv (LoCon-style), ranked by conv_dim


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))


def find_targets(model: nn.Module, parents: tuple[str, ...], rank: int, alpha: float,
                 conv_parents: tuple[str, ...] = (), conv_rank: int = 0, conv_alpha: float = 1.0
                 ) -> list[Target]:
    """Linear / 1x1-conv children of ``parents`` get ``rank``; with ``conv_rank`` the children of
    ``conv_parents`` join too, their 3x3 convs at ``conv_rank`` (kohya's LoCon rule)."""
    targets: dict[str, Target] = {}
    for pname, parent in model.named_modules():
        cls = type(parent).__name__
        in_attn, in_conv = cls in parents, conv_rank > 0 and cls in conv_parents
        if not (in_attn or in_conv):
            continue
        for cname, child in parent.named_modules():
            full = f"{pname}.{cname}" if pname else cname
            if not cname or full in targets:
                continue
            if _is_pointwise(child):
                targets[full] = Target(full, rank, alpha)
            elif in_conv and isinstance(child, nn.Conv2d):
                targets[full] = Target(full, conv_rank, conv_alpha, conv=True)
    return list(targets.values())


def _grouped_pattern(targets: list[Target], field: str, default: float) -> dict[str, float]:
    """peft's rank/alpha pattern: one regex per value (an alternation of the module names) rather
    than one per module. peft matches every module against every pattern; hundreds of distinct
    patterns (LoCon-style conv ranks on SDXL) overflow Python's regex cache and the injection
    recompiled them for each module (tens of seconds on a real SDXL UNet)."""
    names: dict[float, list[str]] = {}
    for t in targets:
        if getattr(t, field) != default:
            names.setdefault(getattr(t, field), []).append(re.escape(t.name))
    return {"|".join(group): value for value, group in names.items()}


def inject_lora(model: nn.Module, targets: list[Target], dropout: float = 0.0,
                adapter_name: str = ADAPTER) -> list[nn.Parameter]:
    """Wrap every target with a peft LoRA layer (up weights start at zero: no change at step 0)."""
    if not targets:
        raise UserInputError(f"no LoRA target modules found in {type(model).__name__}", "lora_no_targets",
                             model=type(model).__name__)
    base = targets[0]
    config = LoraConfig(
        r=base.rank, lora_alpha=base.alpha, lora_dropout=dropout, init_lora_weights=True,
        target_modules=[t.name for t in targets],
        rank_pattern=_grouped_pattern(targets, "rank", base.rank),
        alpha_pattern=_grouped_pattern(targets, "alpha", base.alpha),
    )
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    params = [p for n, p in model.named_parameters() if "lora_" in n and f".{adapter_name}." in n]
    for p in params:
        p.requires_grad_(True)
    return params


def unet_targets(unet: nn.Module, cfg: LoraNetworkConfig) -> list[Target]:
    return find_targets(unet, _UNET_ATTN_PARENTS, cfg.dim, cfg.alpha,
                        _UNET_CONV_PARENTS, cfg.conv_dim, cfg.conv_alpha)


def text_encoder_targets(text_encoder: nn.Module, cfg: LoraNetworkConfig) -> list[Target]:
    return find_targets(text_encoder, _TE_PARENTS, cfg.dim, cfg.alpha)


def te_prefixes(num_text_encoders: int) -> list[str]:
    """kohya: ``lora_te`` for SD 1.x/2.x, ``lora_te1`` / ``lora_te2`` for SDXL's two encoders."""
    return [TE_PREFIX] if num_text_encoders == 1 else [f"{TE_PREFIX}{i + 1}" for i in range(num_text_encoders)]


def lora_layers(model: nn.Module, adapter: str = ADAPTER) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


def uses_sgm_names(unet: nn.Module) -> bool:
    """kohya sd-scripts names an SDXL UNet's modules by the original (SGM) checkpoint layout,
    ``lora_unet_input_blocks_4_1_...``; SD 1.x / 2.x files use diffusers' block names. A1111 maps
    diffusers names with SD 1.x's block arithmetic, which misses SDXL's first upsampler, while
    the SGM names it (and ComfyUI) take as they are."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def unet_file_name(unet: nn.Module, name: str) -> str:
    """The module path a file names: SGM for SDXL (falling back to the diffusers path for
    containers without an original name), the diffusers path otherwise."""
    if not uses_sgm_names(unet):
        return name
    from engine.models.single_file import unet_key_to_original

    try:
        return unet_key_to_original(f"{name}.weight", unet.config).removesuffix(".weight")
    except KeyError:
        return name


def kohya_key(model: nn.Module, prefix: str, name: str) -> str:
    """kohya module key. transformers >= 5 dropped the ``text_model.`` level of CLIPTextModel,
    but A1111/ComfyUI keys keep it (``lora_te_text_model_encoder_layers_0_...``); SDXL's UNet
    modules go by their SGM names (:func:`uses_sgm_names`)."""
    if prefix.startswith(TE_PREFIX) and not hasattr(model, "text_model") and \
            not name.startswith("text_model."):
        name = "text_model." + name
    if prefix == UNET_PREFIX:
        name = unet_file_name(model, name)
    return f"{prefix}_{name.replace('.', '_')}"


def file_keys_of(model: nn.Module, prefix: str, name: str) -> list[str]:
    """Every key a file may use for one module: ours first, then the plain diffusers path
    (SDXL files written with diffusers' block names, by older versions or other trainers)."""
    ours, plain = kohya_key(model, prefix, name), f"{prefix}_{name.replace('.', '_')}"
    if prefix.startswith(TE_PREFIX):
        return [ours]
    return [ours] if ours == plain else [ours, plain]


def kohya_state_dict(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix}_{path with . -> _}.lora_down/lora_up.weight`` and ``.alpha`` per wrapped module."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        key = kohya_key(model, prefix, name)
        out[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().clone()
        out[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().clone()
        out[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER]))
    return out


def load_kohya_state_dict(model: nn.Module, prefix: str, state: dict[str, torch.Tensor],
                          adapter_name: str = ADAPTER) -> int:
    """Copy kohya tensors back into an injected model (resume, picking an epoch). Returns count."""
    n = 0
    for name, layer in lora_layers(model, adapter_name).items():
        key = next((k for k in file_keys_of(model, prefix, name) if f"{k}.lora_down.weight" in state), None)
        if key is None:
            continue
        with torch.no_grad():
            layer.lora_A[adapter_name].weight.copy_(state[f"{key}.lora_down.weight"])
            layer.lora_B[adapter_name].weight.copy_(state[f"{key}.lora_up.weight"])
        n += 1
    return n


def set_multiplier(model: nn.Module, multiplier: float, adapter_name: str = ADAPTER) -> None:
    """Scale every LoRA's contribution (the 'LoRA weight' in A1111's ``<lora:name:w>``)."""
    for layer in lora_layers(model, adapter_name).values():
        r = layer.r[adapter_name]
        layer.scaling[adapter_name] = layer.lora_alpha[adapter_name] / r * multiplier
