"""LoRA on Flux.1's transformer, saved in kohya's Flux layout.

Trained on diffusers' FluxTransformer2DModel (separate q, k, v projections, peft layers); saved
under the names of the original (BFL) checkpoint, ``lora_unet_double_blocks_0_img_attn_qkv``,
the layout ComfyUI, Forge and diffusers' FluxPipeline.load_lora_weights all read. Where the
original fuses several diffusers projections into one weight (a double block's qkv, a single
block's linear1 = q | k | v | MLP-in) the file holds one LoRA for the fused weight: the parts'
down matrices stacked, their up matrices on the block diagonal, and alpha times the number of
parts, so that alpha / rank (every consumer's scale) stays the one trained. The product is the
same delta, exactly; diffusers recognises the block-diagonal form and splits it back.

Targets: the attention and MLP linears of every double and single block (kohya's defaults
without the modulation layers). Text encoders are never trained for Flux (frozen, as in
kohya's Flux LoRAs; diffusers drops T5 LoRA keys).
"""
from __future__ import annotations

from typing import Any

import torch

from engine.networks.lora import ADAPTER, UNET_PREFIX, Target, lora_layers

# original (BFL) module -> the diffusers modules it fuses, per block; "{i}" is the block index
DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}


def original_modules(transformer: Any) -> dict[str, tuple[str, ...]]:
    """Every original module a LoRA goes on -> its diffusers module paths, in fused order."""
    out: dict[str, tuple[str, ...]] = {}
    for i in range(len(transformer.transformer_blocks)):
        for name, parts in DOUBLE.items():
            out[f"double_blocks.{i}.{name}"] = tuple(f"transformer_blocks.{i}.{p}" for p in parts)
    for i in range(len(transformer.single_transformer_blocks)):
        for name, parts in SINGLE.items():
            out[f"single_blocks.{i}.{name}"] = tuple(f"single_transformer_blocks.{i}.{p}" for p in parts)
    return out


def flux_targets(transformer: Any, rank: int, alpha: float) -> list[Target]:
    return [Target(p, rank, alpha) for parts in original_modules(transformer).values() for p in parts]


def file_key(original: str) -> str:
    return f"{UNET_PREFIX}_{original.replace('.', '_')}"


def kohya_flux_state_dict(transformer: Any) -> dict[str, torch.Tensor]:
    """The trained LoRA in kohya's Flux layout (fused where the original fuses)."""
    layers: dict[str, Any] = lora_layers(transformer)
    out: dict[str, torch.Tensor] = {}
    for original, parts in original_modules(transformer).items():
        if not all(p in layers for p in parts):
            continue
        downs = [layers[p].lora_A[ADAPTER].weight.detach() for p in parts]
        ups = [layers[p].lora_B[ADAPTER].weight.detach() for p in parts]
        alphas = {float(layers[p].lora_alpha[ADAPTER]) / layers[p].r[ADAPTER] for p in parts}
        if len(alphas) != 1:
            raise ValueError(f"{original}: its parts were trained at different alpha / rank")
        key = file_key(original)
        out[f"{key}.lora_down.weight"] = torch.cat(downs).clone()
        out[f"{key}.lora_up.weight"] = torch.block_diag(*ups).clone()
        out[f"{key}.alpha"] = torch.tensor(alphas.pop() * sum(d.shape[0] for d in downs))
    return out


def file_modules(transformer: Any) -> dict[str, list[tuple[str, int]]]:
    """File module key -> the diffusers modules it covers with their output rows, in order (what
    a consumer splits a fused up matrix into)."""
    modules = dict(transformer.named_modules())
    return {file_key(original): [(p, modules[p].out_features) for p in parts]
            for original, parts in original_modules(transformer).items()}


def apply_file_tensors(transformer: Any, state: dict[str, torch.Tensor], adapter_name: str) -> int:
    """Any kohya Flux file (ours or another trainer's, dense or block-diagonal) on layers injected
    at the file's own rank per part: each part gets the whole down matrix and its rows of the up
    matrix, which is exactly how the fused weight's delta splits. Returns modules filled."""
    layers: dict[str, Any] = lora_layers(transformer, adapter_name)
    n = 0
    for key, parts in file_modules(transformer).items():
        if f"{key}.lora_down.weight" not in state:
            continue
        down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
        row = 0
        for path, rows in parts:
            with torch.no_grad():
                layers[path].lora_A[adapter_name].weight.copy_(down)
                layers[path].lora_B[adapter_name].weight.copy_(up[row:row + rows])
            row += rows
            n += 1
    return n
