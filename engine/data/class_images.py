"""DreamBooth prior preservation: class images made by the base model itself when the user has
none (or too few), so the model keeps knowing what a plain "photo of a dog" looks like while it
learns *your* dog.

Generated before any LoRA layer is injected (they must show the untouched base), seeded and
numbered, with the class prompt as caption, into ``<reg_path>/1_<class prompt>/``; a later run
finds them and generates only what is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.data.folder import images_under
from engine.data.importer import subset_folder_name
from engine.fileio import atomic_write, atomic_write_bytes


def count_images(root: Path) -> int:
    return len(images_under(root)) if Path(root).is_dir() else 0


def ensure_class_images(model, reg_root: Path, class_prompt: str, count: int, resolution: int,
                        seed: int, steps: int = 20, cfg_scale: float = 7.0, negative: str = "",
                        batch_size: int = 4, device=None, progress: Callable[[int, int], None] | None = None) -> int:
    """Generate class images until ``reg_root`` holds ``count``; returns how many were made."""
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch

    reg_root = Path(reg_root)
    missing = count - count_images(reg_root)
    if missing <= 0:
        return 0
    folder = reg_root / subset_folder_name(class_prompt, 1)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(model)
    if device is not None:
        pipe.to(device)
    start = len([p for p in folder.glob("class_*.png")])
    made = 0
    while made < missing:
        n = min(batch_size, missing - made)
        specs = [SampleSpec(class_prompt, negative, seed + start + made + k, steps, cfg_scale,
                            resolution, resolution) for k in range(n)]
        for k, im in enumerate(generate_batch(pipe, specs)):
            path = folder / f"class_{start + made + k:05d}.png"
            atomic_write(path, lambda tmp, im=im: im.save(tmp, format="PNG"))
            atomic_write_bytes(path.with_suffix(".txt"), class_prompt.encode("utf-8"))
        made += n
        if progress:
            progress(made, missing)
    return made
