"""LyCORIS networks (LoCon, LoHa, LoKr) through the lycoris-lora package.

lycoris-lora owns the math (Hadamard / Kronecker products, scaling, dropout) and hooks the base
modules' forward. What we add:
- SD-only target presets: lycoris' own "full" preset also lists ``TimestepEmbedding`` for other
  architectures, which on an SD UNet creates ``time_embedding.linear_1`` twice and fails.
- A1111/ComfyUI key names: transformers >= 5 dropped the ``text_model.`` level of CLIPTextModel, so
  lycoris would write ``lora_te_encoder_...``; files must read ``lora_te_text_model_encoder_...``.
  An SDXL UNet's modules are written by their SGM names, as kohya does (engine.networks.lora).

lycoris keeps its target lists as class attributes of ``LycorisNetworkKohya`` (read from the base
class, so a subclass cannot hold its own): every build sets all of them under a lock. The package is
imported on first use: it pulls in bitsandbytes, several seconds that a LoRA job should not pay.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

import torch

from engine.i18n import UserInputError
from engine.methods.lycoris import LycorisNetworkConfig
from engine.networks import lora

if TYPE_CHECKING:
    from lycoris.kohya import LycorisNetworkKohya

UNET_PREFIX, TE_PREFIX = lora.UNET_PREFIX, lora.TE_PREFIX
_TE_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
_COMMON = {"module_algo_map": {}, "name_algo_map": {}, "use_fnmatch": False, "exclude_name": []}
SD_PRESETS: dict[str, dict] = {
    # every linear/conv of the UNet blocks plus conv_in/out and the time embedding (LyCORIS' default)
    "full": {"enable_conv": True,
             "unet_target_module": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"],
             "unet_target_name": ["conv_in", "conv_out", "time_embedding.linear_1",
                                  "time_embedding.linear_2"],
             "text_encoder_target_module": _TE_MODULES, "text_encoder_target_name": []},
    # the classic LoRA targets: attention and feed-forward of the transformer blocks
    "attn-mlp": {"enable_conv": False, "unet_target_module": ["Transformer2DModel"],
                 "unet_target_name": [], "text_encoder_target_module": _TE_MODULES,
                 "text_encoder_target_name": []},
    "attn-only": {"enable_conv": False, "unet_target_module": ["Attention"], "unet_target_name": [],
                  "text_encoder_target_module": ["CLIPAttention", "CLIPSdpaAttention"],
                  "text_encoder_target_name": []},
}
ALGO = {"locon": "locon", "loha": "loha", "lokr": "lokr"}
_LOCK = threading.RLock()


def _lycoris():
    """The lycoris.kohya module, its per-module INFO chatter turned down (we log a summary)."""
    import lycoris.kohya

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    return lycoris.kohya


def _use_preset(name: str) -> None:
    _lycoris().LycorisNetworkKohya.apply_preset({**SD_PRESETS[name], **_COMMON})


def _as_lycoris_te(text_encoders: list | None):
    """lycoris names one encoder ``lora_te`` and a list ``lora_te1``, ``lora_te2`` (SDXL)."""
    if not text_encoders:
        return None
    return text_encoders[0] if len(text_encoders) == 1 else list(text_encoders)


def create_network(unet: torch.nn.Module, text_encoders: list | None,
                   cfg: LycorisNetworkConfig) -> LycorisNetworkKohya:
    """Build and hook a fresh (no-op at step 0) network into ``unet`` (and the text encoders)."""
    conv_dim = cfg.dim if cfg.conv_dim is None else cfg.conv_dim
    conv_alpha = cfg.alpha if cfg.conv_alpha is None else cfg.conv_alpha
    te = _as_lycoris_te(text_encoders)
    with _LOCK:
        _use_preset(cfg.preset)
        net = _lycoris().LycorisNetworkKohya(
            te, unet, multiplier=1.0, lora_dim=cfg.dim, alpha=cfg.alpha,
            conv_lora_dim=conv_dim, conv_alpha=conv_alpha, dropout=cfg.dropout,
            rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout, use_tucker=False,
            network_module=ALGO[cfg.type], factor=cfg.factor, decompose_both=cfg.decompose_both,
            weight_decompose=cfg.dora_wd, wd_on_out=False, warn_on_unmatched=False)
    if not net.unet_loras:
        raise UserInputError(f"network.preset {cfg.preset!r} found no modules to train in this UNet",
                             "lycoris_no_modules", preset=cfg.preset)
    net.apply_to(te, unet, apply_text_encoder=te is not None, apply_unet=True)
    return net


def _renames(text_encoders: list | None) -> list[tuple[str, str]]:
    """(lycoris prefix, file prefix) for each encoder without the ``text_model`` level."""
    tes = list(text_encoders or [])
    return [(f"{p}_", f"{p}_text_model_") for p, te in zip(lora.te_prefixes(len(tes)), tes)
            if not hasattr(te, "text_model")] if tes else []


def _unet_names(unet: torch.nn.Module | None) -> dict[str, str]:
    """lycoris' UNet module name -> the file's, where they differ (SDXL: SGM names)."""
    if unet is None or not lora.uses_sgm_names(unet):
        return {}
    out = {}
    for path, _ in unet.named_modules():
        inner, outer = f"{UNET_PREFIX}_{path.replace('.', '_')}", lora.kohya_key(unet, UNET_PREFIX, path)
        if path and inner != outer:
            out[inner] = outer
    return out


def _rename_modules(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        module, dot, rest = key.partition(".")
        out[names.get(module, module) + dot + rest] = value
    return out


def to_file_keys(state: dict[str, torch.Tensor], text_encoders: list | None,
                 unet: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Network state -> A1111/ComfyUI keys (``lora_te_text_model_encoder_...``; SDXL UNet
    modules by their SGM names)."""
    out = _rename_modules(state, _unet_names(unet))
    for inner, outer in _renames(text_encoders):
        out = {(outer + k.removeprefix(inner) if k.startswith(inner) and not k.startswith(outer)
                else k): v for k, v in out.items()}
    return out


def from_file_keys(state: dict[str, torch.Tensor], text_encoders: list | None,
                   unet: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The reverse of :func:`to_file_keys` (an SDXL file with diffusers' names passes too)."""
    out = _rename_modules(state, {v: k for k, v in _unet_names(unet).items()})
    for inner, outer in _renames(text_encoders):
        out = {(inner + k.removeprefix(outer) if k.startswith(outer) else k): v
               for k, v in out.items()}
    return out


def file_state_dict(net: LycorisNetworkKohya, text_encoders: list | None,
                    unet: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return to_file_keys(state, text_encoders, unet)


def config_from_metadata(meta: dict[str, str], has_te: bool) -> LycorisNetworkConfig | None:
    """The network config our own files record (ss_network_args), or None for foreign files."""
    try:
        args = json.loads(meta.get("ss_network_args") or "{}")
        if meta.get("ss_network_module") != "lycoris.kohya" or args.get("algo") not in ALGO:
            return None
        return LycorisNetworkConfig(
            type=args["algo"], dim=int(meta["ss_network_dim"]), alpha=float(meta["ss_network_alpha"]),
            conv_dim=int(args["conv_dim"]), conv_alpha=float(args["conv_alpha"]),
            preset=args.get("preset", "full"), factor=int(args.get("factor", -1)),
            decompose_both=args.get("decompose_both") == "True", train_unet_only=not has_te,
            dora_wd=args.get("dora_wd") == "True" and args.get("wd_on_output") == "False")
    except (KeyError, ValueError, TypeError):
        return None


def network_from_file_state(state: dict[str, torch.Tensor], unet: torch.nn.Module,
                            text_encoders: list | None, meta: dict[str, str] | None = None
                            ) -> LycorisNetworkKohya:
    """Rebuild and hook the modules a saved file describes.

    Our own files are rebuilt from the config they record: lycoris' shape-guessing reload picks a
    different Kronecker factor for some LoKr layers (e.g. a 4-channel conv_in) and fails. Foreign
    files (any algo lycoris knows) go through that generic reload.
    """
    inner = from_file_keys(state, text_encoders, unet)
    has_te = any(k.startswith(TE_PREFIX) for k in inner)
    tes = text_encoders if has_te else None
    te = _as_lycoris_te(tes)
    cfg = config_from_metadata(meta or {}, has_te)
    if cfg is not None:
        net = create_network(unet, tes, cfg)
        if set(net.state_dict()) == set(inner):
            net.load_state_dict(inner, strict=True)
            return net
        unhook(net)
    with _LOCK:  # it builds (and drops) a default network first: give it a preset that fits SD
        _use_preset("full")
        net, _ = _lycoris().create_network_from_weights(1.0, None, None, te, unet, weights_sd=inner)
    found = {lora.lora_name for lora in net.unet_loras + net.text_encoder_loras}
    missing = sorted({k.split(".")[0] for k in inner} - found)
    if missing:
        raise UserInputError(f"{missing[0]}: no such module in this base model (wrong base model?)"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
                             "file_wrong_base", module=missing[0], count=len(missing))
    net.apply_to(te, unet, apply_text_encoder=has_te, apply_unet=True)
    net.load_state_dict(inner, strict=False)
    return net


def load_file_state(net: LycorisNetworkKohya, state: dict[str, torch.Tensor],
                    text_encoders: list | None, unet: torch.nn.Module | None = None) -> None:
    """Copy another epoch of the same run into an already hooked network."""
    inner = from_file_keys(state, text_encoders, unet)
    own = net.state_dict()
    if set(own) != set(inner) or any(own[k].shape != inner[k].shape for k in own):
        raise UserInputError("the file's modules differ from the loaded network", "file_modules_differ")
    net.load_state_dict(inner, strict=True)


def _difference(module) -> torch.Tensor:
    """A module's full-strength low-rank change, as its forward computes it (lycoris'
    ``get_diff_weight`` applies LoHa's and LoKr's alpha/dim scale twice; their ``get_weight``
    holds it once)."""
    if hasattr(module, "get_weight"):
        return module.get_weight(module.shape) * module.scalar
    return module.get_diff_weight(multiplier=1.0, shape=module.shape)[0]


@torch.no_grad()
def full_weights(net: LycorisNetworkKohya) -> list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """(base module, its weight, its weight with the network at full strength) per module, for
    merging at any strength as A1111 does (``set_merged``)."""
    out = []
    for module in net.unet_loras + net.text_encoder_loras:
        base = module.org_module[0]
        weight = base.weight.detach()
        full = weight.float() + _difference(module).float().reshape(weight.shape)
        if getattr(module, "wd", False):
            full = module.apply_weight_decompose(full, 1.0)
        out.append((base, weight.clone(), full.to(weight.dtype)))
    return out


@torch.no_grad()
def set_merged(merged: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]], weight: float) -> None:
    """Each base weight set to ``W + weight x (full - W)``; weight 0 puts the base back exactly."""
    for module, base, full in merged:
        module.weight.copy_(base if weight == 0 else base + weight * (full - base))


def unhook(net: LycorisNetworkKohya) -> None:
    """Give the base modules their own forward back (the network no longer acts)."""
    for module in net.unet_loras + net.text_encoder_loras:
        module.restore()
