"""Apply kohya-format LoRA files to a base already in memory, and swap them in place.

Why not diffusers' load_lora_weights per file: comparing ten epochs at five weights would load
and convert ten files through the pipeline; here the LoRA layers are injected once per file
*structure* (same ranks and modules, as all epochs of one run have) and later files only copy
tensors into them.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from engine.i18n import Explained
from engine.models.loader import LoadedModel
from engine.networks import lora

_MODULE = re.compile(r"^(lora_unet|lora_te[12]?)_(.+)\.lora_down\.weight$")


class LoraFileError(Explained, ValueError):
    pass


def file_structure(state: dict[str, torch.Tensor]) -> dict[tuple[str, str], tuple[int, float]]:
    """{(prefix, kohya module key): (rank, alpha)} for every module in a kohya LoRA file."""
    out = {}
    for key, down in state.items():
        m = _MODULE.match(key)
        if not m:
            continue
        module = key.removesuffix(".lora_down.weight")
        alpha = state.get(f"{module}.alpha")
        rank = down.shape[0]
        out[(m.group(1), module)] = (rank, float(alpha) if alpha is not None else float(rank))
    if not out:
        raise LoraFileError("no kohya LoRA modules (lora_unet_*/lora_te_*) found in the file", "lora_no_modules")
    return out


def _module_names(model: torch.nn.Module, prefix: str) -> dict[str, str]:
    """kohya key -> module path, for every module of ``model`` (both names of an SDXL UNet module)."""
    return {key: name for name, _ in model.named_modules() if name
            for key in lora.file_keys_of(model, prefix, name)}


class LoraSwapper:
    """Holds one base model; ``load(path)`` makes that LoRA active, ``set_weight(w)`` scales it."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        tes = model.text_encoders
        self._flux = model.spec.denoiser == "flux"
        if self._flux:  # the transformer, its modules under their original (fused) names
            from engine.networks import flux_lora

            transformer = model.unet.transformer
            self._parts = {lora.UNET_PREFIX: transformer}
            self._flux_modules = flux_lora.file_modules(transformer)
            self._names = {lora.UNET_PREFIX: {key: key for key in self._flux_modules}}
        else:
            self._parts = {lora.UNET_PREFIX: model.unet, **dict(zip(lora.te_prefixes(len(tes)), tes))}
            self._names = {p: _module_names(m, p) for p, m in self._parts.items()}
        self._adapters: dict[frozenset, str] = {}
        self.active: str | None = None
        self.injections = 0  # how many times layers were injected (tests assert reuse)

    def _adapter_for(self, structure: dict) -> str:
        sig = frozenset(structure.items())
        if sig in self._adapters:
            return self._adapters[sig]
        name = f"grid{len(self._adapters)}"
        for prefix, part in self._parts.items():
            targets = []
            for (pfx, key), (rank, alpha) in structure.items():
                if pfx != prefix:
                    continue
                if key not in self._names[prefix]:
                    raise LoraFileError(f"{key}: no such module in this base model (wrong base model?)",
                                        "file_wrong_base", module=key, count=1)
                if self._flux:  # each diffusers part of a fused module at the file's rank
                    targets += [lora.Target(path, rank, alpha) for path, _ in self._flux_modules[key]]
                else:
                    targets.append(lora.Target(self._names[prefix][key], rank, alpha))
            if targets:
                lora.inject_lora(part, targets, adapter_name=name)
                part.requires_grad_(False)
        self._adapters[sig] = name
        self.injections += 1
        return name

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        name = self._adapter_for(file_structure(state))
        if self._flux:
            from engine.networks import flux_lora

            flux_lora.apply_file_tensors(self._parts[lora.UNET_PREFIX], state, name)
        else:
            for prefix, part in self._parts.items():
                lora.load_kohya_state_dict(part, prefix, state, adapter_name=name)
        self._activate(name)

    def _activate(self, name: str) -> None:
        for part in self._parts.values():
            for layer in part.modules():
                if isinstance(layer, LoraLayer):
                    if name in layer.lora_A:
                        layer.set_adapter(name)
                    else:  # this module is not in the active file: contribute nothing
                        layer.set_adapter([])
        self.active = name

    def set_weight(self, weight: float) -> None:
        if self.active is None:
            raise RuntimeError("load a LoRA file first")
        for part in self._parts.values():
            lora.set_multiplier(part, weight, adapter_name=self.active)
