"""A1111 hypernetworks, written by hand (no maintained library trains or writes this format).

A hypernetwork is a pair of small MLPs per context width: before every attention's key and value
projections the context ``c`` becomes ``c + mlp(c) * strength``. The pair is picked by the
context's last dimension, so on SD 1.5 the 768-wide pair acts on the text context of cross
attention and the 320/640/1280 pairs on the image tokens of self attention (A1111's rule).

We apply it with forward pre-hooks on each ``Attention.to_k`` / ``to_v`` of a diffusers UNet, which
works with any attention processor (SDPA, xformers) that calls those projections.

File (A1111 ``models/hypernetworks/<name>.pt``, plain containers and tensors only, so
``torch.load(weights_only=True)`` reads it): ``{width: (state_k, state_v), "layer_structure",
"activation_func", "is_layer_norm", "weight_initialization", "use_dropout", "dropout_structure",
"activate_output", "last_layer_dropout", "optional_info", "name", "step", "sd_checkpoint",
"sd_checkpoint_name"}``; module keys ``linear.<index in the Sequential>.weight/bias``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.export.pt_io import save_pt
from engine.i18n import Explained

# A1111's names; note its "swish" is Hardswish.
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "linear": None, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
    "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "silu": nn.SiLU, "mish": nn.Mish, "softsign": nn.Softsign, "celu": nn.CELU, "selu": nn.SELU,
}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
# What ComfyUI's hypernetwork loader reads (its comfy_extras/nodes_hypernetwork.py): only these
# activations (with another it logs an error and applies nothing), and with layer norm it counts
# the norm layers as layers, so its last linear layer gets the activation too (A1111: not
# unless activate_output). A1111 reads every option.
COMFYUI_ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")


def comfyui_differences(activation: str, layer_norm: bool, activate_output: bool) -> list[str]:
    """Catalogue keys (``warn.<key>``) of the settings ComfyUI reads differently from A1111."""
    out = []
    if activation not in COMFYUI_ACTIVATIONS:
        out.append("hn_comfy_activation")
    elif layer_norm and activation != "linear" and not activate_output:
        out.append("hn_comfy_layer_norm")
    return out


class HypernetworkFileError(Explained, ValueError):
    pass


def default_dropout_structure(layer_structure: list[float], use_dropout: bool,
                              last_layer_dropout: bool) -> list[float]:
    """What A1111 derives for old files without ``dropout_structure``: 0.3 after hidden layers."""
    n = len(layer_structure)
    if not use_dropout:
        return [0.0] * n
    return [0.0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0.0, 0.0]


class HypernetworkModule(nn.Module):
    """``x + mlp(x) * strength`` (strength 1 while training, as in A1111)."""

    def __init__(self, width: int, layer_structure: list[float], activation: str = "linear",
                 layer_norm: bool = False, activate_output: bool = False,
                 dropout_structure: list[float] | None = None, weight_init: str = "Normal") -> None:
        super().__init__()
        act = ACTIVATIONS.get(activation or "linear", "unknown")
        if act == "unknown":
            raise HypernetworkFileError(f"unsupported activation {activation!r}", "hn_activation",
                                        name=activation)
        layers: list[nn.Module] = []
        last = len(layer_structure) - 2
        for i in range(len(layer_structure) - 1):
            out = int(width * layer_structure[i + 1])
            layers.append(nn.Linear(int(width * layer_structure[i]), out))
            if act is not None and (i < last or activate_output):
                layers.append(act())
            if layer_norm:
                layers.append(nn.LayerNorm(out))
            p = dropout_structure[i + 1] if dropout_structure else 0.0
            if p > 0:
                layers.append(nn.Dropout(p=p))
        self.linear = nn.Sequential(*layers)
        self.multiplier = 1.0
        self._init(weight_init, activation)

    def _init(self, weight_init: str, activation: str) -> None:
        """A1111's initialisations (its "Normal" also sets LayerNorm weights to N(0, 0.01))."""
        nonlin = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            w, b = layer.weight.data, layer.bias.data
            if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(w, mean=0.0, std=0.01)
            elif weight_init == "XavierUniform":
                nn.init.xavier_uniform_(w)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(w)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(w, nonlinearity=nonlin)
            elif weight_init == "KaimingNormal":
                nn.init.kaiming_normal_(w, nonlinearity=nonlin)
            else:
                raise HypernetworkFileError(f"unknown weight initialization {weight_init!r}", "hn_init",
                                            name=weight_init)
            nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strength = 1.0 if self.training else self.multiplier
        return x + self.linear(x.to(self.linear[0].weight.dtype)).to(x.dtype) * strength


class Hypernetwork(nn.Module):
    """All module pairs, keyed by context width, plus the settings A1111 stores with them."""

    def __init__(self, widths: list[int], layer_structure: list[float], activation: str = "linear",
                 layer_norm: bool = False, activate_output: bool = False,
                 dropout_structure: list[float] | None = None, weight_init: str = "Normal") -> None:
        super().__init__()
        self.settings = {"layer_structure": [float(v) for v in layer_structure],
                         "activation_func": activation, "is_layer_norm": bool(layer_norm),
                         "weight_initialization": weight_init,
                         "use_dropout": bool(dropout_structure and any(dropout_structure)),
                         "dropout_structure": [float(v) for v in (dropout_structure or
                                                                  [0.0] * len(layer_structure))],
                         "activate_output": bool(activate_output)}
        self.settings["last_layer_dropout"] = self.settings["dropout_structure"][-2] != 0
        self.pairs = nn.ModuleDict({
            str(w): nn.ModuleList([HypernetworkModule(w, layer_structure, activation, layer_norm,
                                                      activate_output, dropout_structure, weight_init)
                                   for _ in range(2)])
            for w in sorted(set(widths))})
        self._hooks: list[Any] = []

    @property
    def widths(self) -> list[int]:
        return [int(w) for w in self.pairs]

    def set_multiplier(self, strength: float) -> None:
        for pair in self.pairs.values():
            for module in pair:
                module.multiplier = strength

    def transform(self, context: torch.Tensor, which: int) -> torch.Tensor:
        pair = self.pairs[str(context.shape[-1])] if str(context.shape[-1]) in self.pairs else None
        return context if pair is None else pair[which](context)

    # -- hooking into a diffusers UNet -------------------------------------------------------
    def attach(self, unet: nn.Module) -> int:
        """Pre-hooks on every attention's to_k (pair 0) and to_v (pair 1). Returns the count."""
        self.detach()
        for module in unet.modules():
            if hasattr(module, "to_k") and hasattr(module, "to_v") and hasattr(module, "to_q"):
                for which, proj in ((0, module.to_k), (1, module.to_v)):
                    self._hooks.append(proj.register_forward_pre_hook(
                        lambda _m, args, kw, which=which: ((self.transform(args[0], which),
                                                            *args[1:]), kw),
                        with_kwargs=True))
        return len(self._hooks) // 2

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- A1111 file ---------------------------------------------------------------------------
    def to_file_dict(self, name: str, step: int, checkpoint_hash: str, checkpoint_name: str
                     ) -> dict[Any, Any]:
        data: dict[Any, Any] = {
            int(w): tuple({k: v.detach().to("cpu", torch.float32).clone()
                           for k, v in module.state_dict().items()} for module in pair)
            for w, pair in self.pairs.items()}
        data |= {**self.settings, "optional_info": None, "name": name, "step": int(step),
                 "sd_checkpoint": checkpoint_hash[:10] or None,
                 "sd_checkpoint_name": checkpoint_name or None}
        return data

    def save(self, path: Path, name: str, step: int, checkpoint_hash: str = "",
             checkpoint_name: str = "") -> Path:
        data = self.to_file_dict(name, step, checkpoint_hash, checkpoint_name)
        return save_pt(data, Path(path), name)  # A1111's safe loader accepts it


def widths_in_unet(unet: nn.Module) -> list[int]:
    """Every context width an attention's key projection sees (SD 1.5: 320, 640, 768, 1280)."""
    return sorted({m.to_k.in_features for m in unet.modules()
                   if hasattr(m, "to_k") and hasattr(m, "to_q") and isinstance(m.to_k, nn.Linear)})


def load_hypernetwork(path: Path) -> tuple[Hypernetwork, dict[str, Any]]:
    """Read an A1111 hypernetwork ``.pt`` without unpickling code (weights_only)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickles with code, truncated files
        detail = f"{type(err).__name__}: {str(err)[:200]}"
        raise HypernetworkFileError(f"{Path(path).name}: not a loadable hypernetwork file ({detail})",
                                    "hn_unloadable", name=Path(path).name, error=detail) from None
    if not isinstance(data, dict):
        raise HypernetworkFileError(f"{Path(path).name}: not a hypernetwork file", "hn_not_file", name=Path(path).name)
    widths = [k for k in data if isinstance(k, int)]
    if not widths:
        raise HypernetworkFileError(f"{Path(path).name}: no hypernetwork layers in the file", "hn_no_layers",
                                    name=Path(path).name)
    structure = [float(v) for v in data.get("layer_structure") or [1, 2, 1]]
    dropout = data.get("dropout_structure") or default_dropout_structure(
        structure, bool(data.get("use_dropout")), bool(data.get("last_layer_dropout")))
    net = Hypernetwork(widths, structure, data.get("activation_func") or "linear",
                       bool(data.get("is_layer_norm")), bool(data.get("activate_output", True)),
                       [float(v) for v in dropout], data.get("weight_initialization") or "Normal")
    for w in widths:
        for module, state in zip(net.pairs[str(w)], data[w]):
            state = dict(state)
            for old, new in (("linear1", "linear.0"), ("linear2", "linear.1")):  # oldest files
                for suffix in ("weight", "bias"):
                    if f"{old}.{suffix}" in state:
                        state[f"{new}.{suffix}"] = state.pop(f"{old}.{suffix}")
            try:
                module.load_state_dict(state)
            except RuntimeError as err:
                raise HypernetworkFileError(f"{Path(path).name}: layers do not match its settings "
                                            f"({str(err)[:200]})", "hn_layers", name=Path(path).name,
                                            error=str(err)[:200]) from None
    return net, {k: v for k, v in data.items() if not isinstance(k, int)}
