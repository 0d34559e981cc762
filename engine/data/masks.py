"""Where each training image's loss mask comes from (masked loss): a folder of mask images named
like the images (kohya's ``conditioning_data_dir`` for masked loss), or the images' own alpha
channel (kohya's ``alpha_mask``). White = the loss counts, black = it is ignored, grey between.

An image without a mask (no file, or no alpha channel) counts everywhere, and the trainer says
how many there are; a regularization image never has one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.data.folder import IMAGE_EXTENSIONS, DatasetError
from engine.data.images import load_mask


@dataclass(frozen=True)
class MaskSource:
    dataset_root: Path
    folder: Path | None  # mask images; None = the images' alpha channel

    def mask_file(self, image: Path) -> Path | None:
        """The mask of ``image``: in the folder at the image's place relative to the dataset
        (``10_name/img.png`` -> ``<folder>/10_name/img.<any image type>``), else by its name alone."""
        if self.folder is None:
            return None
        try:
            relative = Path(image).relative_to(self.dataset_root).with_suffix("")
        except ValueError:
            relative = Path(Path(image).stem)
        for stem in (self.folder / relative, self.folder / Path(image).stem):
            for ext in sorted(IMAGE_EXTENSIONS):
                for candidate in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
                    if candidate.is_file():
                        return candidate
        return None

    def load(self, image: Path) -> Image.Image | None:
        """The mask of ``image`` as a greyscale image, or None where it has none."""
        path = Path(image) if self.folder is None else self.mask_file(image)
        if path is None:
            return None
        try:
            return load_mask(path, from_alpha=self.folder is None)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise DatasetError(f"{path}: not a readable mask image ({err})", "dataset_bad_mask", path=path,
                               error=err) from None
