"""Check every file of a dataset before training and say, per file, what is wrong or unusual.

Never raises on a bad file and never modifies the originals: the report is what the user reads
(and what the web app shows); fixable issues (alpha, odd colour modes, rotation) are only noted,
because :func:`engine.data.images.load_rgb` handles them when the working copy is made.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.data.folder import IMAGE_EXTENSIONS, DatasetIndex
from engine.data.images import MAX_ASPECT, proportions_ok

MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit (about 13k x 13k)


@dataclass
class Issue:
    """One finding about a file: ``level`` error (not trained on), warning (trained on, worth a
    look) or note (fixed automatically); ``key`` names its text in the catalogues
    (``validate.<key>``, filled from ``params``), ``text`` is the engine's English."""
    level: str
    key: str
    text: str
    params: dict = field(default_factory=dict)


@dataclass
class FileReport:
    path: Path
    ok: bool = True  # False: cannot be used for training
    issues: list[Issue] = field(default_factory=list)
    size: tuple[int, int] | None = None
    sha256: str = ""
    dhash: int | None = None

    def _add(self, level: str, key: str, text: str, params: dict) -> None:
        self.issues.append(Issue(level, key, text, params))

    def error(self, key: str, text: str, **params) -> None:
        self.ok = False
        self._add("error", key, text, params)

    def warn(self, key: str, text: str, **params) -> None:
        self._add("warning", key, text, params)

    def note(self, key: str, text: str, **params) -> None:
        self._add("note", key, text, params)

    def _texts(self, level: str) -> list[str]:
        return [i.text for i in self.issues if i.level == level]

    @property
    def errors(self) -> list[str]:
        return self._texts("error")

    @property
    def warnings(self) -> list[str]:
        return self._texts("warning")

    @property
    def notes(self) -> list[str]:  # handled automatically, worth knowing
        return self._texts("note")


@dataclass
class DatasetReport:
    files: list[FileReport]
    duplicates: list[tuple[Path, Path]]       # exact same bytes
    near_duplicates: list[tuple[Path, Path]]  # visually near-identical (dHash distance <= 4)

    @property
    def usable(self) -> list[FileReport]:
        return [f for f in self.files if f.ok]

    def summary(self) -> str:
        bad = [f for f in self.files if not f.ok]
        warn = [f for f in self.files if f.ok and f.warnings]
        return (f"{len(self.files)} files: {len(self.usable)} usable, {len(bad)} unusable, "
                f"{len(warn)} with warnings, {len(self.duplicates)} exact and "
                f"{len(self.near_duplicates)} near duplicate pairs")


def dhash(im: Image.Image, size: int = 8) -> int:
    """Difference hash: compares neighbouring pixels of a tiny grayscale copy (robust to resizing
    and re-encoding, unlike a byte hash)."""
    small = np.asarray(im.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _check_name(path: Path, rep: FileReport) -> None:
    name = path.name
    if any(ord(c) < 32 for c in name) or name != name.strip():
        rep.warn("odd_name", "odd file name (control characters or leading/trailing spaces)")
    if not name.isascii():
        rep.note("non_ascii", "non-ASCII file name (fine here; some older tools mishandle it)")


def check_image(path: Path, resolution: int) -> FileReport:
    rep = FileReport(path)
    _check_name(path, rep)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # streamed: a 1.5 GiB "image" must not sit in memory
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    rep.sha256 = digest.hexdigest()
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        rep.error("not_image_type", f"not an image file type ({path.suffix or 'no extension'})",
                  suffix=path.suffix or "-")
        return rep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rep.size = im.size
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    rep.error("too_large", f"image too large ({im.size[0]}x{im.size[1]}): refused as a "
                              "possible decompression bomb", width=im.size[0], height=im.size[1])
                    return rep
                if not proportions_ok(*im.size):
                    rep.error("extreme_shape", f"extreme shape ({im.size[0]}x{im.size[1]}, more than "
                              f"{MAX_ASPECT}:1): resizing it for training would need huge amounts of memory",
                              width=im.size[0], height=im.size[1], ratio=MAX_ASPECT)
                    return rep
                if getattr(im, "is_animated", False):
                    frames = getattr(im, "n_frames", "?")
                    rep.note("animated", f"animated ({frames} frames): the first frame is used", frames=frames)
                mode = im.mode
                orientation = im.getexif().get(0x0112, 1)
                im.load()  # decodes everything: truncated files fail here
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    rep.note("transparency", "has transparency: composited on a white background")
                elif mode not in ("RGB", "L"):
                    rep.note("colour_mode", f"colour mode {mode}: converted to RGB", mode=mode)
                if orientation not in (1, None):
                    rep.note("rotated", f"EXIF orientation {orientation}: rotated upright", orientation=orientation)
                rep.dhash = dhash(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        if isinstance(err, UnidentifiedImageError):
            rep.error("unreadable", "not a readable image")
        else:
            rep.error("bomb", f"refused as a possible decompression bomb ({err})", error=err)
        return rep
    except (OSError, SyntaxError, ValueError) as err:
        rep.error("corrupt", f"corrupt or truncated image ({err})", error=err)
        return rep
    if rep.size and min(rep.size) * 8 < resolution:
        rep.error("too_small", f"far too small for {resolution} px training ({rep.size[0]}x{rep.size[1]}): "
                  "it would be blown up more than 8 times", width=rep.size[0], height=rep.size[1],
                  resolution=resolution)
    elif rep.size and min(rep.size) < resolution:
        rep.warn("small", f"smaller than the training resolution ({rep.size[0]}x{rep.size[1]} < "
                 f"{resolution}): it will be upscaled and look soft", width=rep.size[0], height=rep.size[1],
                 resolution=resolution)
    return rep


def validate_files(paths: list[Path], resolution: int, near_threshold: int = 4,
                   check: Callable[[Path, int], FileReport] | None = None) -> DatasetReport:
    """Every file checked (``check``: check_image, or a caching wrapper of it), then exact and
    near duplicates across them."""
    check = check or check_image
    files = [copy.deepcopy(check(Path(p), resolution)) for p in sorted(paths)]
    dups, near = [], []
    seen: dict[str, Path] = {}
    for f in files:
        if f.sha256 in seen:
            dups.append((seen[f.sha256], f.path))
        else:
            seen[f.sha256] = f.path
    exact = {b for _, b in dups}
    hashed = [f for f in files if f.ok and f.dhash is not None and f.path not in exact]
    for i, a in enumerate(hashed):
        for b in hashed[i + 1:]:
            if bin(a.dhash ^ b.dhash).count("1") <= near_threshold:
                near.append((a.path, b.path))
    for a, b in dups:
        # the same bytes twice would only double that image's weight: the later copy is left out
        next(f for f in files if f.path == b).error("duplicate", f"exact duplicate of {a.name}", name=a.name)
    for a, b in near:
        next(f for f in files if f.path == b).warn("near_duplicate", f"looks nearly identical to {a.name}",
                                                   name=a.name)
    return DatasetReport(files, dups, near)


def usable_index(index: DatasetIndex, resolution: int,
                 check: Callable[[Path, int], FileReport] | None = None) -> tuple[DatasetIndex, DatasetReport]:
    """``index`` without the files training cannot use (unreadable, not images, bombs, extreme
    shapes, far too small) and without exact duplicates (the first copy stays). The files are
    never touched: they are only left out; the report says which and why."""
    report = validate_files([it.path for it in index.items], resolution, check=check)
    dropped = {f.path for f in report.files if not f.ok}
    subsets = [replace(s, items=[it for it in s.items if it.path not in dropped]) for s in index.subsets]
    return DatasetIndex(index.root, [s for s in subsets if s.items]), report


def excluded(report: DatasetReport) -> list[tuple[Path, str]]:
    """(file, why) for every file :func:`usable_index` leaves out."""
    return [(f.path, "; ".join(f.errors)) for f in report.files if not f.ok]


def validate_folder(root: Path, resolution: int) -> DatasetReport:
    """Every file under ``root`` except caption files and hidden files."""
    paths = [p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() not in (".txt", ".caption", ".json", ".toml")]
    return validate_files(paths, resolution)
