"""Caption every image of a (working-copy) dataset folder with WD14 or BLIP, writing ``.txt``
files beside the images. Existing captions are kept, replaced or extended, as the user chooses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

from engine.data.folder import images_under, read_caption
from engine.data.tags import join_tags, split_tags
from engine.fileio import atomic_write_bytes

Mode = Literal["skip", "overwrite", "append"]


class Captioner(Protocol):
    def caption(self, paths: list[Path], opts) -> list[str]: ...


@dataclass
class CaptionReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.written)} captions written, {len(self.kept)} existing kept"


def dataset_images(folder: Path) -> list[Path]:
    return images_under(folder)


def load_captioner(method: Literal["wd14", "blip"], model: str = "", local_files_only: bool = False,
                   threshold: float = 0.35, character_threshold: float | None = None,
                   exclude: list[str] | tuple[str, ...] = ()):
    """(captioner, its options) for WD14 tags or BLIP sentences; ``model``: hub id or local
    folder, empty = the usual public model. Raises CaptionModelError when it cannot be had."""
    if method == "wd14":
        from engine.captioning.wd14 import DEFAULT_REPO, WD14Options, WD14Tagger

        return (WD14Tagger.load(model or DEFAULT_REPO, local_files_only),
                WD14Options(general_threshold=threshold,
                            character_threshold=character_threshold or threshold, exclude=list(exclude)))
    from engine.captioning.blip import DEFAULT_REPO, BlipCaptioner, BlipOptions

    return BlipCaptioner.load(model or DEFAULT_REPO, local_files_only), BlipOptions()


def caption_images(paths: list[Path], captioner: Captioner, opts, mode: Mode = "skip",
                   trigger: str = "", progress: Callable[[int, int], None] | None = None) -> CaptionReport:
    """``mode``: skip images that already have a caption, overwrite them, or append new tags
    after the old ones (duplicates dropped). ``trigger`` goes in front of every new caption."""
    report = CaptionReport()
    todo = []
    for p in paths:
        if mode == "skip" and read_caption(p) is not None:
            report.kept.append(p)
        else:
            todo.append(p)
    batch_size = max(1, getattr(opts, "batch_size", 4))
    for s in range(0, len(todo), batch_size):
        chunk = todo[s:s + batch_size]
        for path, text in zip(chunk, captioner.caption(chunk, opts)):
            tags = split_tags(text)
            if mode == "append":
                tags = split_tags(read_caption(path) or "") + tags
            if trigger:
                tags = [trigger] + [t for t in tags if t != trigger]
            atomic_write_bytes(path.with_suffix(".txt"), join_tags(dict.fromkeys(tags)).encode("utf-8"))
            report.written.append(path)
        if progress:
            progress(min(s + batch_size, len(todo)), len(todo))
    return report
