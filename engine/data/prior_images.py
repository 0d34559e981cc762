"""Prior preservation from the user's own captions: one switch against bleed.

Optionally with prompts to keep (``dataset.keep_prompts``): other things of the model's world the
base draws as well, one image each. A new *shape* bleeds into every shape ("a blue square" turns
into the new one) even when its own captions are preserved; the base's images of other shapes
and colours hold the rest of its world in place (measured: BENCHMARKS.md). They are drawn only
when some caption holds the trigger: without one the add-on is meant to change every prompt.

A LoRA trained on "zkz, a star on a white background" also changes what "a blue square" draws
(the text encoder's layers see every prompt). Regularization images the base draws for the same
captions WITHOUT the trigger, trained on beside the user's images, ask the add-on to leave those
prompts as the base had them. One image per training image, its caption with the trigger word(s)
taken out, seeded by position, kept in ``<folder>/1_prior/`` with a record of how they were
made; a later run reuses what still matches and redraws only what does not.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engine.data.folder import DatasetIndex
from engine.data.words import has_word, trigger_words, without_words
from engine.fileio import atomic_write, atomic_write_bytes

SUBSET = "1_prior"
RECORD = "prior.json"


@dataclass(frozen=True)
class PriorRecipe:
    """What decides every image's pixels besides its prompt: change one, redraw them all."""
    base: str
    resolution: int
    seed: int
    steps: int
    cfg_scale: float
    sampler: str = "euler_a"


def prior_prompts(index: DatasetIndex, trigger_phrase: str) -> list[str]:
    """The base's prompts: each training caption that holds a trigger word, without it. A caption
    without one is left out: its image without the trigger would be your concept again, and
    preserving the base's picture for it would undo what the image teaches."""
    words = trigger_words(trigger_phrase)
    out = []
    for item in index.items:
        if not any(has_word(item.caption, w) for w in words):
            continue
        out.append(without_words(item.caption, words))
    return out


def _image(folder: Path, i: int) -> Path:
    return folder / f"prior_{i:05d}.png"


def ensure_prior_images(model, root: Path, prompts: list[str], recipe: PriorRecipe, caption_extension: str = ".txt",
                        device=None, batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> int:
    """Make ``root/1_prior`` hold exactly one image per prompt (captions beside them with
    ``caption_extension``); returns how many were drawn."""
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch

    folder = Path(root) / SUBSET
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / RECORD
    same_recipe = record.is_file() and record.read_text(encoding="utf-8") == json.dumps(asdict(recipe))

    def drawn(i: int) -> bool:
        caption = _image(folder, i).with_suffix(caption_extension)
        return (same_recipe and _image(folder, i).is_file() and caption.is_file()
                and caption.read_text(encoding="utf-8") == prompts[i])

    todo = [i for i in range(len(prompts)) if not drawn(i)]
    for old in folder.glob("prior_*.*"):  # images of a dataset that has since shrunk
        if old.suffix in (".png", caption_extension) and old.stem[6:].isdigit() and int(old.stem[6:]) >= len(prompts):
            old.unlink()
    if not todo:
        return 0
    record.unlink(missing_ok=True)  # half-drawn folders never look finished
    pipe = build_pipeline(model, scheduler=recipe.sampler)
    if device is not None:
        pipe.to(device)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        specs = [SampleSpec(prompts[i], "", recipe.seed + i, recipe.steps, recipe.cfg_scale,
                            recipe.resolution, recipe.resolution) for i in chunk]
        for i, im in zip(chunk, generate_batch(pipe, specs)):
            atomic_write(_image(folder, i), lambda tmp, im=im: im.save(tmp, format="PNG"))
            atomic_write_bytes(_image(folder, i).with_suffix(caption_extension), prompts[i].encode("utf-8"))
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    atomic_write_bytes(record, json.dumps(asdict(recipe)).encode("utf-8"))
    return len(todo)
