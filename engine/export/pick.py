"""'Pick this epoch': publish one saved checkpoint under the final output name.

The tensors are copied unchanged (so the AutoV3 hash stays the same); the metadata names the new
file and remembers where it came from and the weight chosen in the grid.
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from engine.export.hashes import safetensors_file_data_hash
from engine.export.pt_io import save_pt
from engine.export.safetensors_io import load_with_metadata
from engine.fileio import atomic_write
from engine.i18n import Explained


class PickError(Explained, ValueError):
    """The picked file cannot be published under the asked name."""


def pick_checkpoint(src: Path, dest: Path, preferred_weight: float | None = None) -> Path:
    """``dest`` takes the source's suffix: a hypernetwork ``.pt`` stays a ``.pt``."""
    src, dest = Path(src), Path(dest).with_suffix(Path(src).suffix)
    if src.resolve() == dest.resolve():
        raise PickError("the picked checkpoint already has that name", "pick_same_name")
    if src.suffix.lower() == ".pt":
        return _pick_hypernetwork(src, dest)
    try:
        tensors, meta = load_with_metadata(src)
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise PickError(f"{src.name} is not a readable .safetensors file ({err})", "pick_unreadable",
                        name=src.name, error=err) from None
    _refuse_non_finite(src, tensors.values())
    name = dest.stem
    meta.update({"ss_output_name": name, "modelspec.title": name, "ss_picked_from": src.name})
    if preferred_weight is not None:
        meta["ss_preferred_weight"] = f"{preferred_weight:g}"
    atomic_write(dest, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    if meta.get("sshs_model_hash") and safetensors_file_data_hash(dest) != meta["sshs_model_hash"]:
        raise PickError(f"{dest}: tensor data changed while copying", "pick_changed", path=dest)  # never corrupt
    return dest


def _refuse_non_finite(src: Path, tensors) -> None:
    """A file with NaN/inf weights draws noise or black images: never published."""
    import torch

    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
        raise PickError(f"{src.name} holds NaN or infinite weights (training diverged); pick an earlier file",
                        "pick_non_finite", name=src.name)


def _pick_hypernetwork(src: Path, dest: Path) -> Path:
    """A1111 hypernetwork: same layers, the file's ``name`` follows the new file name (the
    file has no slot for a preferred strength)."""
    import torch

    try:
        data = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for a file that carries code, or a damaged archive
        raise PickError(f"{src.name} is refused: it is not a plain tensors-only .pt file ({err})",
                        "pick_unsafe_pt", name=src.name) from None
    if not isinstance(data, dict) or not any(isinstance(k, int) for k in data):
        raise PickError(f"{src.name}: not a hypernetwork file", "hn_not_file", name=src.name)
    _refuse_non_finite(src, (t for v in data.values() if isinstance(v, (list, tuple))
                             for layer in v if isinstance(layer, dict)
                             for t in layer.values() if isinstance(t, torch.Tensor)))
    data["name"] = dest.stem
    return save_pt(data, dest, dest.stem)
