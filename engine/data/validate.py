"""Check every file of a dataset before training and say, per file, what is wrong or unusual.

Never raises on a bad file and never modifies the originals: the report is what the user reads
(and what the web app shows); fixable issues (alpha, odd colour modes, rotation) are only noted,
because :func:`engine.data.images.load_rgb` handles them when the working copy is made.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.data.folder import IMAGE_EXTENSIONS
from engine.data.images import MAX_ASPECT, proportions_ok

MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit (about 13k x 13k)


@dataclass
class FileReport:
    path: Path
    ok: bool = True  # False: cannot be used for training
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # handled automatically, worth knowing
    size: tuple[int, int] | None = None
    sha256: str = ""
    dhash: int | None = None

    def error(self, msg: str) -> None:
        self.ok = False
        self.errors.append(msg)


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
        rep.warnings.append("odd file name (control characters or leading/trailing spaces)")
    if not name.isascii():
        rep.notes.append("non-ASCII file name (fine here; some older tools mishandle it)")


def check_image(path: Path, resolution: int) -> FileReport:
    rep = FileReport(path)
    _check_name(path, rep)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # streamed: a 1.5 GiB "image" must not sit in memory
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    rep.sha256 = digest.hexdigest()
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        rep.error(f"not an image file type ({path.suffix or 'no extension'})")
        return rep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rep.size = im.size
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    rep.error(f"image too large ({im.size[0]}x{im.size[1]}): refused as a possible "
                              "decompression bomb")
                    return rep
                if not proportions_ok(*im.size):
                    rep.error(f"extreme shape ({im.size[0]}x{im.size[1]}, more than {MAX_ASPECT}:1): "
                              "resizing it for training would need huge amounts of memory")
                    return rep
                if getattr(im, "is_animated", False):
                    rep.notes.append(f"animated ({getattr(im, 'n_frames', '?')} frames): the first frame is used")
                mode = im.mode
                orientation = im.getexif().get(0x0112, 1)
                im.load()  # decodes everything: truncated files fail here
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    rep.notes.append("has transparency: composited on a white background")
                elif mode not in ("RGB", "L"):
                    rep.notes.append(f"colour mode {mode}: converted to RGB")
                if orientation not in (1, None):
                    rep.notes.append(f"EXIF orientation {orientation}: rotated upright")
                rep.dhash = dhash(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        rep.error("not a readable image" if isinstance(err, UnidentifiedImageError)
                  else f"refused as a possible decompression bomb ({err})")
        return rep
    except (OSError, SyntaxError, ValueError) as err:
        rep.error(f"corrupt or truncated image ({err})")
        return rep
    if rep.size and min(rep.size) < resolution:
        rep.warnings.append(f"smaller than the training resolution ({rep.size[0]}x{rep.size[1]} < "
                            f"{resolution}): it will be upscaled and look soft")
    return rep


def validate_files(paths: list[Path], resolution: int, near_threshold: int = 4) -> DatasetReport:
    files = [check_image(Path(p), resolution) for p in sorted(paths)]
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
        next(f for f in files if f.path == b).warnings.append(f"exact duplicate of {a.name}")
    for a, b in near:
        next(f for f in files if f.path == b).warnings.append(f"looks nearly identical to {a.name}")
    return DatasetReport(files, dups, near)


def validate_folder(root: Path, resolution: int) -> DatasetReport:
    """Every file under ``root`` except caption files and hidden files."""
    paths = [p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() not in (".txt", ".caption", ".json", ".toml")]
    return validate_files(paths, resolution)
