"""Opt-in loading of pickle checkpoints (.ckpt / .pt / .pth / .bin).

Pickles can run code when unpickled, so they are refused unless the user opts in
(``model.allow_pickle``). Even then we only unpickle with ``torch.load(weights_only=True)``,
which accepts tensors and plain containers and refuses anything that names a class or function
(a malicious file fails here instead of running). The tensors are written once to a
``.safetensors`` copy in the cache, and every later load goes through that copy.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from engine.fileio import atomic_write
from engine.i18n import Explained
from engine.paths import cache_dir


class UnsafePickleError(Explained, ValueError):
    pass


def converted_copy(path: Path, cache: Path | None = None) -> Path:
    """The ``.safetensors`` copy of a pickle checkpoint's tensors (made on first use; keyed by the
    file's absolute path, size and modification time, so a replaced file is converted again)."""
    from safetensors.torch import save_file

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = (cache or cache_dir()) / "converted" / f"{path.stem}-{key}.safetensors"
    if out.is_file():
        return out
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafePickleError(
            f"{path.name} contains more than tensors (it names code to run when loaded: "
            f"{str(err).splitlines()[0][:200]}); refused even with allow_pickle. Ask for a "
            ".safetensors version of this model.", "pickle_code", name=path.name) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise UnsafePickleError(f"{path.name} is not a readable PyTorch checkpoint: {err}", "pickle_unreadable",
                                name=path.name, error=err) from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    tensors = {k: v.contiguous() for k, v in (state or {}).items()
               if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UnsafePickleError(f"{path.name} holds no model weights (no tensors in its state dict)",
                                "pickle_no_tensors", name=path.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), {"converted_from": path.name}))
    return out
