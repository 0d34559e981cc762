"""What kind of add-on file a path holds, from one read of it: the grid's swapper and the model
card both ask, and a ``.pt`` can be large (an SD hypernetwork is 80-170 MB), so it is opened
once for the answer instead of once per question.

Kinds: ``lora`` (kohya lora_down/lora_up, incl. LyCORIS LoCon), ``lycoris`` (LoHa / LoKr /
CP modules only lycoris-lora applies), ``embedding`` (Textual Inversion), ``aesthetic``,
``hypernetwork``, ``checkpoint`` (original-layout full model) or ``unknown``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_LYCORIS_ONLY = (".hada_", ".lokr_", ".lora_mid.", ".dora_scale")
AESTHETIC_KEY = "aesthetic_embedding"


def needs_lycoris(keys) -> bool:
    """True when a file holds module types only lycoris-lora can apply (LoHa, LoKr, CP/Tucker,
    DoRA magnitudes)."""
    return any(marker in k for k in keys for marker in _LYCORIS_ONLY)


@dataclass
class FileKind:
    kind: str
    keys: frozenset[str] = frozenset()
    meta: dict[str, str] = field(default_factory=dict)
    dtype: str = ""  # of the first tensor, safetensors files only ("F16", "F32", ...)
    data: Any = None  # a .pt file's loaded contents
    error: str = ""  # why the file could not be read


def _safetensors_kind(keys: frozenset[str], meta: dict[str, str]) -> str:
    if AESTHETIC_KEY in keys:
        return "aesthetic"
    if "emb_params" in keys or {"clip_l", "clip_g"} <= keys:
        return "embedding"
    if needs_lycoris(keys):
        return "lycoris"
    if meta.get("ss_network_module") or any(".lora_down." in k for k in keys):
        return "lora"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    return "unknown"


def _pt_kind(data: Any) -> str:
    if isinstance(data, torch.Tensor):
        return "aesthetic"
    if isinstance(data, dict) and "string_to_param" in data:
        return "embedding"
    if isinstance(data, dict) and any(isinstance(k, int) for k in data):
        return "hypernetwork"
    return "unknown"


def read_kind(path: Path) -> FileKind:
    """Never raises for a bad file: ``kind`` is "unknown" and ``error`` says why."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                keys, meta = frozenset(f.keys()), dict(f.metadata() or {})
                dtype = str(f.get_slice(next(iter(keys))).get_dtype()) if keys else ""
        except Exception as err:  # safetensors raises its own error types for damaged files
            return FileKind("unknown", error=str(err))
        return FileKind(_safetensors_kind(keys, meta), keys, meta, dtype)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickles with code, truncated files
        return FileKind("unknown", error=f"{type(err).__name__}: {str(err)[:200]}")
    return FileKind(_pt_kind(data), data=data)
