"""Aesthetic Gradients, part 1: an aesthetic embedding from a few reference images.

The embedding is the mean of the reference images' CLIP image embeddings, normalised: one
``[1, D]`` tensor. The ``.pt`` is exactly what the A1111 aesthetic-gradients extension reads from
``models/aesthetic_embeddings`` (a bare tensor, loadable with ``torch.load(weights_only=True)``);
the ``.safetensors`` copy holds the same tensor under ``aesthetic_embedding`` plus which CLIP made
it, so applying it later can load the matching text projection without being told.

The CLIP must be the one whose text tower is the base model's text encoder (SD 1.5:
``openai/clip-vit-large-patch14``), because the embedding is compared with projected text
features at generation time (see aesthetic_apply).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from engine.export.file_kind import AESTHETIC_KEY
from engine.export.pt_io import save_pt
from engine.i18n import Explained

SAFETENSORS_KEY = AESTHETIC_KEY
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class AestheticError(Explained, ValueError):
    pass


class AestheticSettings(BaseModel):
    """How an aesthetic embedding is applied (the A1111 extension's fields; its UI defaults)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(5, ge=0, le=200, description="optimisation steps of the text encoder per prompt")
    lr: float = Field(1e-4, gt=0, le=1.0, description="Adam learning rate of those steps")
    slerp: bool = Field(False, description="spherical instead of linear blend with the prompt's embedding")
    text: str = Field("", description="text that rotates the image embedding (A1111 'Aesthetic text for imgs')")
    slerp_angle: float = Field(0.1, ge=0.0, le=1.0, description="how far that text rotates it")
    text_negative: bool = Field(False, description="rotate away from the text instead")
    clip: str | None = Field(None, description="CLIP hub id or folder; default: the one recorded in the "
                                               "file, else the base family's CLIP")


def list_images(source: Path | list[Path]) -> list[Path]:
    """Image files of a folder (sorted, not recursive) or an explicit list."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise AestheticError(f"reference image folder not found: {folder}", "ae_folder_not_found", path=folder)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise AestheticError(f"no reference images in {source} (png, jpg, webp, ...)", "ae_no_images",
                             path=source)
    return paths


def _open_rgb(path: Path):
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except Exception as err:  # PIL raises many kinds for bad files
        raise AestheticError(f"cannot read reference image {Path(path).name}: {err}", "ae_image_unreadable",
                             name=Path(path).name, error=err) from None


@contextmanager
def quiet_transformers():
    """Loading one tower from a full CLIP folder makes transformers list every weight of the
    other tower as unexpected; that is expected here, so only errors are shown meanwhile."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_clip_vision(clip: str, local_files_only: bool = False):
    """(vision model with projection, image processor) from a hub id or a local folder."""
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    try:
        with quiet_transformers():
            model = CLIPVisionModelWithProjection.from_pretrained(clip, local_files_only=local_files_only)
            processor = CLIPImageProcessorPil.from_pretrained(clip, local_files_only=local_files_only)
    except OSError as err:
        raise AestheticError(f"cannot load CLIP '{clip}': {err}", "ae_clip_load", clip=clip, error=err) from None
    return model.eval(), processor


@torch.no_grad()
def image_embedding(images: Path | list[Path], clip: str, batch_size: int = 8,
                    local_files_only: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Normalised mean CLIP image embedding of the reference images: ``[1, D]`` float32."""
    paths = list_images(images)
    model, processor = load_clip_vision(clip, local_files_only)
    features = []
    for start in range(0, len(paths), batch_size):
        batch = [_open_rgb(p) for p in paths[start:start + batch_size]]
        inputs = processor(images=batch, return_tensors="pt")
        features.append(model(pixel_values=inputs["pixel_values"]).image_embeds.float())
        if progress:
            progress(min(start + batch_size, len(paths)), len(paths))
    mean = torch.cat(features).mean(dim=0, keepdim=True)
    return mean / mean.norm(dim=-1, keepdim=True)


def save_embedding(embedding: torch.Tensor, out_dir: Path, name: str, clip: str,
                   num_images: int) -> tuple[Path, Path]:
    """``<name>.pt`` (the extension's format) and ``<name>.safetensors``, both written atomically."""
    from engine.export.safetensors_io import save_with_metadata

    tensor = embedding.detach().float().cpu().contiguous()
    out_dir = Path(out_dir)
    pt = save_pt(tensor, out_dir / f"{name}.pt", name)  # A1111's safe loader accepts it
    meta = {"name": name, "clip_model": str(clip), "num_images": str(num_images),
            "lora_forge.kind": "aesthetic_embedding"}
    st = save_with_metadata({SAFETENSORS_KEY: tensor}, out_dir / f"{name}.safetensors", meta,
                            precision="fp32")
    return pt, Path(st)


def read_embedding(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """(normalised ``[1, D]`` embedding, metadata) from either file; rejects anything else."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from engine.export.safetensors_io import load_with_metadata

        state, meta = load_with_metadata(path)
        tensor = state.get(SAFETENSORS_KEY)
    else:
        meta = {}
        try:
            tensor = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise AestheticError(f"{path.name}: not a plain tensor file ({err})", "ae_not_tensor", name=path.name,
                                 error=err) from None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or tensor.shape[-1] < 2:
        raise AestheticError(f"{path.name}: not an aesthetic embedding (a [1, D] tensor)", "ae_not_embedding",
                             name=path.name)
    tensor = tensor.float().reshape(1, -1)
    return tensor / tensor.norm(dim=-1, keepdim=True), meta


def create_aesthetic_embedding(images: Path | list[Path], clip: str, out_dir: Path, name: str,
                               local_files_only: bool = False,
                               progress: Callable[[int, int], None] | None = None
                               ) -> tuple[Path, Path]:
    """Encode the reference images and save the embedding; returns (.pt, .safetensors)."""
    paths = list_images(images)
    embedding = image_embedding(paths, clip, local_files_only=local_files_only, progress=progress)
    return save_embedding(embedding, out_dir, name, clip, len(paths))
