"""A separate VAE in place of the base model's, as users pick one: ``vae-ft-mse-840000`` for
SD 1.5, the fp16-fix VAE for SDXL. It encodes the training latents and decodes every sample,
grid and card image, and its name and hashes go into the trained file's metadata.

Accepted: a ``.safetensors`` file in the original (LDM) key layout, with or without the
``first_stage_model.`` prefix, or in diffusers' layout; a diffusers VAE folder
(``config.json`` + weights); a hub id of one. Pickled ``.ckpt`` / ``.pt`` VAEs only with
``allow_pickle`` (tensors only, converted once), as for base models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.models.loader import PICKLE_SUFFIXES, ModelLoadError, looks_like_path

# a hub VAE repo: its diffusers config and weights, not the extra single-file copies some carry
HUB_VAE_PATTERNS = ["config.json", "diffusion_pytorch_model*.safetensors", "vae/config.json",
                    "vae/diffusion_pytorch_model*.safetensors"]


@dataclass
class VaeInfo:
    """What the metadata says about the VAE (kohya's ``ss_vae_name`` / hashes)."""
    name: str
    weights: Path | None  # the file its hashes are of


def _weights_in(folder: Path) -> Path | None:
    found = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    return found[0] if len(found) == 1 else None


def _layout(keys: list[str]) -> str:
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "first_stage_model.encoder.down.")) for k in keys):
        return "original"
    raise ModelLoadError("not a VAE: none of its keys is a VAE encoder's", "vae_not_vae")


def load_vae(source: str, family: str, dtype: torch.dtype = torch.float32, local_files_only: bool = False,
             allow_pickle: bool = False, cache_dir: Path | None = None, config: Path | None = None
             ) -> tuple[Any, VaeInfo]:
    """(AutoencoderKL, info) for ``source``; a single file's architecture is ``config``'s ``vae/``
    (a diffusers folder), else the base family's reference."""
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from engine.models.families import family as family_record
    from engine.models.reference import reference_config_dir

    source = str(source).strip()
    path = Path(source).expanduser()
    reference = config if config is not None else reference_config_dir(family_record(family).reference)
    try:
        hub = not path.exists() and not looks_like_path(source)
        if hub:  # a hub id of a diffusers VAE: named by its id, as kohya does
            from engine.models.loader import _snapshot

            path = _snapshot(source, local_files_only, cache_dir, HUB_VAE_PATTERNS)
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            if not (folder / "config.json").is_file():
                raise ModelLoadError(f"{path} is a folder but no diffusers VAE (no config.json)", "vae_folder",
                                     path=path)
            vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
            return vae, VaeInfo(source if hub else path.name, _weights_in(folder))
        if not path.is_file():
            raise ModelLoadError(f"VAE file or folder not found: {path}", "vae_not_found", path=path)
        original = path
        if path.suffix.lower() in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(f"{path.name} is a pickle file, which can run code when loaded; use a "
                                     ".safetensors VAE (or set model.allow_pickle = true: tensors only)",
                                     "vae_pickle", name=path.name)
            from engine.models.pickle_checkpoint import UnsafePickleError, converted_copy

            try:
                path = converted_copy(path)
            except UnsafePickleError as err:
                raise ModelLoadError.wrapping(err) from None
        with safe_open(str(path), "pt") as fh:
            keys = list(fh.keys())
        if _layout(keys) == "original":
            vae = AutoencoderKL.from_single_file(str(path), config=str(reference), subfolder="vae",
                                                 local_files_only=True, torch_dtype=dtype)
        else:
            from safetensors.torch import load_file

            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(reference, subfolder="vae"))
            vae.load_state_dict(load_file(str(path)), strict=True)
            vae.to(dtype)
    except ModelLoadError:
        raise
    except Exception as err:  # a wrong architecture, a damaged file: said, not a traceback
        raise ModelLoadError(f"{Path(source).name} cannot be used as the VAE of this "
                             f"{family} model: {str(err)[:300]}", "vae_unusable", name=Path(source).name,
                             error=str(err)[:300]) from None
    return vae, VaeInfo(Path(source).name, original)
