"""Write LoRA files as consumers expect: safetensors, string metadata, hash stamped in."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from engine import VERSION_KEY, __version__
from engine.export.hashes import legacy_hash_bytes, safetensors_data_hash
from engine.fileio import atomic_write

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def cast_state_dict(state: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    dtype = _DTYPES[precision]
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def load_with_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from one read of a ``.safetensors`` file."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def save_with_metadata(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str],
                       precision: str = "fp16") -> Path:
    """Save atomically with the hashes stamped in, as kohya does: both are computed on the file
    as it would be with only the training (``ss_*``) metadata, which never changes afterwards
    (editing the user metadata later must not change a hash): ``sshs_model_hash`` (AutoV3: the
    tensor bytes) and ``sshs_legacy_hash`` (A1111's old short hash of that serialization)."""
    tensors = cast_state_dict(state, precision)
    meta = {k: str(v) for k, v in metadata.items()}
    meta.setdefault(VERSION_KEY, __version__)  # a re-saved file (a pick) keeps the version that trained it
    training_only = save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")} or None)
    meta["sshs_model_hash"] = safetensors_data_hash(training_only)
    meta["sshs_legacy_hash"] = legacy_hash_bytes(training_only)
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
