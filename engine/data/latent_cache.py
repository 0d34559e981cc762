"""Latents on disk, so the VAE runs once per image across runs, not once per run.

Key = sha256 of the image file's bytes + the training size + a fingerprint of the VAE weights:
editing an image, changing the resolution/bucket or the base model's VAE each gives a new
entry. Files live in our cache folder (never beside the user's images), one safetensors per
(image, size). An unreadable, truncated or mismatched entry is detected and rebuilt, never used.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.export.hashes import sha256_file
from engine.fileio import atomic_write
from engine.paths import cache_dir

FORMAT = "1"


def vae_fingerprint(vae) -> str:
    """sha256 over the VAE's weights, scaling factor and shift (Flux's VAE) (short,
    path-independent: the same VAE inside two model files shares cache entries)."""
    shift = getattr(vae.config, "shift_factor", None)
    h = hashlib.sha256(f"{getattr(vae.config, 'scaling_factor', 1.0)}{'' if shift is None else f'-{shift}'}".encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class DiskLatentCache:
    def __init__(self, vae_id: str, downscale: int = 8, root: Path | None = None):
        self.vae_id = vae_id
        self.downscale = downscale  # pixels per latent cell (8 for SD's VAE)
        self.folder = Path(root or cache_dir() / "latents") / vae_id
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0

    def path_for(self, image: Path, size: tuple[int, int]) -> Path:
        return self.folder / f"{sha256_file(image)[:32]}_{size[0]}x{size[1]}.safetensors"

    def load(self, path: Path, size: tuple[int, int], variants: int) -> torch.Tensor | None:
        """Cached [variants, C, h/f, w/f] latents at ``path`` (from :meth:`path_for`), or None
        when absent or not trustworthy."""
        if not path.is_file():
            return None
        try:
            lat = load_file(str(path))["latents"]
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError):
            self.rebuilt += 1
            return None
        expected = (variants, size[1] // self.downscale, size[0] // self.downscale)
        if (lat.dim() != 4 or (lat.shape[0], lat.shape[2], lat.shape[3]) != expected
                or not torch.isfinite(lat).all()):
            self.rebuilt += 1
            return None
        return lat

    def store(self, path: Path, size: tuple[int, int], latents: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "vae": self.vae_id, "width": str(size[0]), "height": str(size[1])}
        atomic_write(path, lambda tmp: save_file({"latents": latents.contiguous().cpu()}, str(tmp), meta))
