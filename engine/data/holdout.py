"""Hold out a share of a dataset for the validation loss (kohya's ``validation_split``).

The choice is seeded, so the same job holds out the same images every run (and a resumed run
trains on exactly the images the interrupted one did); the held-out images are never trained on.
"""
from __future__ import annotations

import random

from engine.data.folder import DatasetError, DatasetIndex, ImageItem, Subset


def hold_out(index: DatasetIndex, share: float, seed: int) -> tuple[DatasetIndex, list[ImageItem]]:
    """(the index without the held-out images, the held-out images): ``share`` of the unique
    images, at least one, and at least one left to train on."""
    items = index.items
    count = max(1, round(share * len(items)))
    if len(items) - count < 1:
        raise DatasetError(f"dataset.validation_split: {len(items)} image(s) cannot be split into training and "
                           "validation images; add images or give dataset.validation_path",
                           "dataset_validation_too_few", count=len(items))
    chosen = {items[i].path for i in random.Random(seed).sample(range(len(items)), count)}
    subsets = [Subset(s.name, s.path, s.repeats, [it for it in s.items if it.path not in chosen])
               for s in index.subsets]
    kept = DatasetIndex(index.root, [s for s in subsets if s.items])
    return kept, [it for it in items if it.path in chosen]
