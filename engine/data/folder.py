"""Scan a kohya-style dataset folder: ``N_name/`` subfolders mean N repeats, captions sit
next to each image as ``.txt`` (``.caption`` is read too).

Why the folder convention: it is what every kohya/SD-Trainer guide teaches, so users' existing
datasets work unchanged.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.fileio import decode_user_text
from engine.i18n import Explained

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_REPEATS_DIR = re.compile(r"^(\d+)_(.+)$")


class DatasetError(Explained, ValueError):
    """The dataset folder cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    subset: str  # the folder name as the user wrote it, e.g. "10_mychar"


@dataclass
class Subset:
    name: str
    path: Path
    repeats: int
    items: list[ImageItem] = field(default_factory=list)


@dataclass
class DatasetIndex:
    root: Path
    subsets: list[Subset]

    @property
    def items(self) -> list[ImageItem]:
        return [it for s in self.subsets for it in s.items]

    @property
    def num_images(self) -> int:
        return sum(len(s.items) for s in self.subsets)

    @property
    def num_train_images(self) -> int:
        """Images seen per epoch, repeats included (kohya's ``ss_num_train_images``)."""
        return sum(len(s.items) * s.repeats for s in self.subsets)

    def epoch_items(self) -> list[ImageItem]:
        """One epoch's worth of items: every image ``repeats`` times."""
        return [it for s in self.subsets for it in s.items for _ in range(s.repeats)]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{subset: {tag: count}} over comma-separated captions (feeds ``ss_tag_frequency``)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.subsets:
            counts: Counter[str] = Counter()
            for it in s.items:
                counts.update(t.strip() for t in it.caption.split(",") if t.strip())
            out[s.name] = dict(counts)
        return out

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        return {s.name: {"n_repeats": s.repeats, "img_count": len(s.items)} for s in self.subsets}


def read_caption(image: Path, extension: str = ".txt") -> str | None:
    for ext in dict.fromkeys((extension, ".txt", ".caption")):
        cap = image.with_suffix(ext)
        if cap.is_file():
            data = cap.read_bytes()
            text = decode_user_text(data)
            return (text if text is not None else data.decode("utf-8", errors="replace")).strip()
    return None


def images_under(root: Path) -> list[Path]:
    """Every image file below ``root`` (any depth), hidden files excluded, sorted."""
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _scan_subset(folder: Path, name: str, repeats: int, caption_ext: str, fallback: str) -> Subset:
    subset = Subset(name=name, path=folder, repeats=repeats)
    for img in _images_in(folder):
        caption = read_caption(img, caption_ext)
        subset.items.append(ImageItem(img, caption if caption is not None else fallback, name))
    return subset


def scan_dataset(root: str | Path, default_repeats: int = 1, caption_extension: str = ".txt") -> DatasetIndex:
    """Index ``root``: either ``N_name`` subfolders, or images directly inside it."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}", "dataset_not_found", path=root)
    subsets: list[Subset] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _REPEATS_DIR.match(sub.name)
        if m:
            # Without a caption file kohya trains on the folder's concept name; so do we.
            subsets.append(_scan_subset(sub, sub.name, int(m.group(1)), caption_extension,
                                        m.group(2).replace("_", " ")))
    if _images_in(root):
        subsets.insert(0, _scan_subset(root, root.name, default_repeats, caption_extension, ""))
    subsets = [s for s in subsets if s.items]
    if not subsets:
        raise DatasetError(
            f"no images found in {root}: put images (png/jpg/webp) directly in it, or in "
            "subfolders named like '10_mychar' (10 = repeats per epoch)", "dataset_no_images", path=root)
    for s in subsets:
        if s.repeats < 1:
            raise DatasetError(f"{s.path}: the repeat count in the folder name must be at least 1",
                               "dataset_zero_repeats", path=s.path)
    return DatasetIndex(root=root, subsets=subsets)
