"""Bring a user's images into a dataset folder of our own: from a folder, a zip, or uploaded files.

Why copy instead of training in place: the originals are never touched (captioning, tag edits
and preprocessing write into the copy), and uploads/zips need a home anyway. The result is a
kohya-style ``N_name`` folder, so everything downstream reads one layout.
Zip members are checked before extraction: no absolute paths or ``..`` (zip-slip), no symlinks,
a size cap against zip bombs; OS junk (``__MACOSX``, ``.DS_Store``, ``Thumbs.db``) is skipped.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from engine.data.folder import IMAGE_EXTENSIONS, DatasetError

CAPTION_EXTENSIONS = {".txt", ".caption"}
MAX_UNZIPPED_BYTES = 8 << 30  # 8 GiB: far above any LoRA dataset, far below a zip bomb
_JUNK = {"__macosx", ".ds_store", "thumbs.db", "desktop.ini"}
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
# why a file was not imported; the keys are also catalogue keys (dataset.skip_<key>) for the web app
SKIP_REASONS = {"not_media": "not an image or caption file",
                "unsafe_path": "unsafe path in zip (absolute or '..'): not extracted",
                "symlink": "symbolic link in zip: not extracted"}


@dataclass
class ImportReport:
    folder: Path
    copied: list[Path] = field(default_factory=list)
    captions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, key of SKIP_REASONS)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (original, new)

    def summary(self) -> str:
        return (f"{len(self.copied)} images ({self.captions} with captions) into {self.folder}; "
                f"{len(self.skipped)} skipped, {len(self.renamed)} renamed")


def safe_filename(name: str, fallback: str = "file") -> str:
    """A name safe on Windows, macOS and Linux: no path parts, no reserved characters, no
    leading dots, NFC-normalised (unicode is kept: Chinese file names are normal here)."""
    name = unicodedata.normalize("NFC", PurePosixPath(name.replace("\\", "/")).name)
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = stem[:120] or fallback
    if stem.upper() in {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                        *(f"LPT{i}" for i in range(1, 10))}:
        stem = f"_{stem}"
    return f"{stem}.{ext.lower()}" if ext else stem


def subset_folder_name(name: str, repeats: int) -> str:
    """``10_my char`` for kohya: repeats in front, the concept name after."""
    if repeats < 1:
        raise DatasetError("repeats must be at least 1", "import_repeats")
    clean = safe_filename(name, "concept").replace(".", "_")
    return f"{repeats}_{clean}"


def _unique(dest: Path, name: str, taken: set[str]) -> str:
    stem, ext = Path(name).stem, Path(name).suffix
    cand, k = name, 1
    while cand.lower() in taken or (dest / cand).exists():
        cand = f"{stem}_{k}{ext}"
        k += 1
    taken.add(cand.lower())
    return cand


def _is_junk(parts: Iterable[str]) -> bool:
    return any(p.lower() in _JUNK or p.startswith("._") for p in parts)


def import_files(files: Iterable[Path | tuple[str, Path]], dest: Path) -> ImportReport:
    """Copy images and their captions into ``dest`` (created). Items are paths, or
    (original name, temp path) pairs as browsers upload them; a caption pairs with the image of
    the same stem. Unsupported files are reported, never fatal."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = ImportReport(dest)
    pairs = [(f[0], Path(f[1])) if isinstance(f, tuple) else (Path(f).name, Path(f)) for f in files]
    images, captions = [], {}
    for original, src in pairs:
        ext = Path(original).suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            images.append((original, src))
        elif ext in CAPTION_EXTENSIONS:
            captions.setdefault(Path(safe_filename(original)).stem.lower(), (ext, src))
        else:
            report.skipped.append((original, "not_media"))
    taken: set[str] = set()
    for original, src in images:
        clean = safe_filename(original, "image")
        name = _unique(dest, clean, taken)
        if name != Path(original).name:
            report.renamed.append((original, name))
        shutil.copyfile(src, dest / name)
        report.copied.append(dest / name)
        cap = captions.get(Path(clean).stem.lower())
        if cap:
            shutil.copyfile(cap[1], (dest / name).with_suffix(".txt"))
            report.captions += 1
    return report


def import_folder(src: Path, dest: Path) -> ImportReport:
    """Every image (and caption) directly inside ``src``; subfolders are imported by the caller
    per concept, because each may have its own repeats."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"folder not found: {src}", "import_not_found", path=src)
    return import_files(sorted(p for p in src.iterdir() if p.is_file() and not _is_junk([p.name])), dest)


def import_zip(archive: Path, dest: Path, max_bytes: int = MAX_UNZIPPED_BYTES) -> ImportReport:
    """Extract the images and captions of ``archive`` (flattened) into ``dest``."""
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"{archive.name} is not a readable zip file ({err})", "import_bad_zip",
                           name=archive.name) from None
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    # scratch space beside dest (same disk: no surprise out-of-space in /tmp)
    with zf, tempfile.TemporaryDirectory(prefix=f".{Path(dest).name}.unzip", dir=Path(dest).parent) as tmp_s:
        tmp = Path(tmp_s)
        members, total, refused = [], 0, []
        for info in zf.infolist():
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.is_dir() or _is_junk(parts):
                continue
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                refused.append((info.filename, "unsafe_path"))
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                refused.append((info.filename, "symlink"))
                continue
            total += info.file_size
            if total > max_bytes:
                raise DatasetError(f"{archive.name} unpacks to more than {max_bytes >> 30} GiB; "
                                   "refused (possible zip bomb)", "import_zip_bomb", name=archive.name,
                                   gib=max_bytes >> 30)
            members.append(info)
        staged = []
        for k, info in enumerate(members):
            out = tmp / f"{k:06d}{PurePosixPath(info.filename).suffix.lower()}"
            with zf.open(info) as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            staged.append((PurePosixPath(info.filename).name, out))
        report = import_files(staged, dest)
    report.skipped = refused + report.skipped
    return report


def import_concept(source: Path | list, workspace: Path, name: str, repeats: int) -> ImportReport:
    """One concept into ``workspace/<repeats>_<name>/`` from a folder, a zip or a file list."""
    dest = Path(workspace) / subset_folder_name(name, repeats)
    if isinstance(source, (list, tuple)):
        return import_files(source, dest)
    source = Path(source)
    if source.is_dir():
        return import_folder(source, dest)
    if source.suffix.lower() == ".zip":
        return import_zip(source, dest)
    raise DatasetError(f"cannot import {source}: give a folder, a .zip, or image files", "import_what",
                       path=source)
