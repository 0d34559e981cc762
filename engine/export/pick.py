"""'Pick this epoch': publish one saved checkpoint under the final output name.

The tensors are copied unchanged (so the AutoV3 hash stays the same); the metadata names the new
file and remembers where it came from and the weight chosen in the grid.
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from engine.export.hashes import safetensors_file_data_hash
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
    tensors, meta = load_with_metadata(src)
    name = dest.stem
    meta.update({"ss_output_name": name, "modelspec.title": name, "ss_picked_from": src.name})
    if preferred_weight is not None:
        meta["ss_preferred_weight"] = f"{preferred_weight:g}"
    atomic_write(dest, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    if meta.get("sshs_model_hash") and safetensors_file_data_hash(dest) != meta["sshs_model_hash"]:
        raise PickError(f"{dest}: tensor data changed while copying", "pick_changed", path=dest)  # never corrupt
    return dest


def _pick_hypernetwork(src: Path, dest: Path) -> Path:
    """A1111 hypernetwork: same layers, the file's ``name`` follows the new file name (the
    file has no slot for a preferred strength)."""
    import torch

    data = torch.load(str(src), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not any(isinstance(k, int) for k in data):
        raise PickError(f"{src.name}: not a hypernetwork file", "hn_not_file", name=src.name)
    data["name"] = dest.stem
    return atomic_write(dest, lambda tmp: torch.save(data, tmp))
