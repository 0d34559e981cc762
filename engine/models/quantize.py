"""A frozen base in 8 bits or 4 bits (NF4), so that Flux.1's 12B transformer fits 12-24 GB cards.

bitsandbytes does the quantization and the matmuls (LLM.int8 with outlier columns, and QLoRA's
NF4 with double-quantized statistics); peft's LoRA layers wrap the quantized layers unchanged
(the base layer's output plus the low-rank path, which stays in fp32 and trains). Only the
``nn.Linear`` layers inside the repeated blocks are quantized: they hold nearly all weights, while
the small input embedders and the output layer stay in the job's precision (QLoRA practice).

Each layer is quantized on the training device (fast on a GPU) and parked on the CPU, so the
quantized transformer waits off the GPU while the text encoders cache, as the unquantized one
does (engine.training.setup). The saved LoRA is the same file as with a full-precision base:
it is trained against a base that differs from the original by the quantization error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

QuantKind = Literal["none", "int8", "nf4"]
# bytes per weight as stored: int8 = 1 byte + one fp32 scale per row (counted by rows below);
# NF4 = 4 bits + an 8-bit absmax per 64 weights, itself scaled per 256 blocks (double quant.)
NF4_BLOCK = 64
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)


class QuantizationUnavailable(RuntimeError):
    """bitsandbytes is missing or cannot run its quantized layers on this device."""


@dataclass(frozen=True)
class QuantizedBytes:
    """What quantizing changes in a module's memory: the bytes its linears held and now hold,
    and the largest layer's weight in the compute dtype (dequantized for each matmul)."""
    before: int
    after: int
    largest_dequantized: int


def quantized_bytes(numel: int, rows: int, kind: QuantKind) -> int:
    if kind == "nf4":
        return int(numel * NF4_BYTES_PER_WEIGHT)
    return numel + 4 * rows  # int8 + SCB


def block_linears(module: nn.Module, blocks: tuple[str, ...]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every ``nn.Linear`` inside the named ``ModuleList`` blocks."""
    found = []
    for block_name in blocks:
        container = module.get_submodule(block_name)
        for parent in container.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:  # (not an already quantized or LoRA-wrapped layer)
                    found.append((parent, name, child))
    return found


def planned_bytes(module: nn.Module, blocks: tuple[str, ...], kind: QuantKind,
                  compute_dtype: torch.dtype) -> QuantizedBytes:
    """What :func:`quantize_blocks` would change, computed from shapes alone (fake tensors too)."""
    layers = [layer for _, _, layer in block_linears(module, blocks)]
    before = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    after = sum(quantized_bytes(layer.weight.numel(), layer.out_features, kind) for layer in layers)
    largest = max((layer.weight.numel() for layer in layers), default=0)
    return QuantizedBytes(before, after, largest * torch.tensor([], dtype=compute_dtype).element_size())


def _bnb():
    try:
        import bitsandbytes as bnb
    except Exception as err:  # noqa: BLE001 - missing, or a build without this platform's library
        raise QuantizationUnavailable(f"bitsandbytes cannot be imported ({type(err).__name__}: {err})") from None
    return bnb


def _quantized(layer: nn.Linear, kind: QuantKind, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    bnb = _bnb()
    weight = layer.weight.data.to(compute_dtype)
    if kind == "nf4":
        q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                              device="meta")
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                     blocksize=NF4_BLOCK)
    else:
        q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                has_fp16_weights=False, threshold=6.0, device="meta")
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.data.to(compute_dtype), requires_grad=False)
    return q.to(device)  # bitsandbytes quantizes when the weight first moves to a device


def probe(kind: QuantKind, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Raise :class:`QuantizationUnavailable` unless a quantized layer runs forward and backward
    here (bitsandbytes builds differ in which devices and kinds they support)."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    x = torch.randn(2, 64, device=device, dtype=compute_dtype, requires_grad=True)
    try:
        q = _quantized(layer, kind, compute_dtype, device)
        q(x).float().square().mean().backward()
    except QuantizationUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the library on this device
        raise QuantizationUnavailable(f"bitsandbytes cannot run {kind} layers on {device.type} "
                                      f"({type(err).__name__}: {err})") from None
    if x.grad is None or not torch.isfinite(x.grad).all():
        raise QuantizationUnavailable(f"bitsandbytes' {kind} layers give no usable gradient on {device.type}")


def quantize_blocks(module: nn.Module, blocks: tuple[str, ...], kind: QuantKind, compute_dtype: torch.dtype,
                    device: torch.device, park: torch.device | None = None) -> QuantizedBytes:
    """Replace every ``nn.Linear`` in ``blocks`` by its quantized layer, quantized on ``device``
    and left on ``park`` (default: ``device``). Frozen: nothing quantized trains."""
    planned = planned_bytes(module, blocks, kind, compute_dtype)
    for parent, name, layer in block_linears(module, blocks):
        q = _quantized(layer, kind, compute_dtype, device)
        q.requires_grad_(False)
        setattr(parent, name, q.to(park) if park is not None else q)
        del layer
    return planned


def is_quantized(module: nn.Module) -> bool:
    return any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in module.modules())
