"""Open any image a user drops in and turn it into a training tensor.

Why so defensive: datasets come from the web (RGBA PNGs, CMYK JPEGs, rotated phone photos,
16-bit PNGs); each must become plain RGB at the training resolution without surprises.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 178_956_970  # PIL's default bomb guard, stated explicitly
# Longest side / shortest side an image may have. Training scales an image to *cover* its
# training size, so a 20000x2 strip (a 203-byte PNG) would become 5 million x 512 pixels.
MAX_ASPECT = 16


def proportions_ok(width: int, height: int) -> bool:
    return min(width, height) >= 1 and max(width, height) <= MAX_ASPECT * min(width, height)


def has_alpha(im: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha channel or a transparent palette entry)."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open ``path`` as RGB: first frame, EXIF rotation applied, alpha composited on ``background``."""
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
        if has_alpha(im):
            rgba = im.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background + (255,))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return im.convert("RGB")


def load_mask(path: Path, from_alpha: bool) -> Image.Image | None:
    """A loss mask as a greyscale image (white = learn, black = ignore): the image's own alpha
    channel when ``from_alpha`` (None for an image without one), else ``path`` read as a mask
    image (its brightness). EXIF rotation is applied as for the images."""
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if not from_alpha:
            return im.convert("L")
        if has_alpha(im):
            return im.convert("RGBA").getchannel("A")
        return None


def mask_tensor(im: Image.Image) -> torch.Tensor:
    """A greyscale mask -> float tensor [1, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None].contiguous()


def cover_and_crop(src_w: int, src_h: int, width: int, height: int) -> tuple[tuple[int, int], int, int]:
    """((resized w, h), left, top): scale to cover ``width``x``height``, centre crop. SDXL is
    told these numbers (original size and crop corner) as part of its conditioning."""
    scale = max(width / src_w, height / src_h)
    new = (max(width, round(src_w * scale)), max(height, round(src_h * scale)))
    return new, (new[0] - width) // 2, (new[1] - height) // 2


def resize_center_crop(im: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers ``width``x``height``, then crop the centre."""
    new, left, top = cover_and_crop(im.width, im.height, width, height)
    im = im.resize(new, Image.Resampling.LANCZOS)
    return im.crop((left, top, left + width, top + height))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1], the range the VAE expects."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of :func:`to_tensor` for a single [3, H, W] image in [-1, 1]."""
    arr = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image will be used (after EXIF rotation), read from the header
    only: bucketing thousands of photos must not decode them all."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated 90/270 degrees
            w, h = h, w
    return w, h
