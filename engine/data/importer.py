"""Bring a user's images into a dataset folder of our own: from a folder, a zip, or uploaded files.

Why copy instead of training in place: the originals are never touched (captioning, tag edits
and preprocessing write into the copy), and uploads/zips need a home anyway. The result is a
kohya-style ``N_name`` folder, so everything downstream reads one layout.
Zip members are checked before extraction: no absolute paths or ``..`` (zip-slip), no symlinks,
no encryption, only stored/deflate, and the bytes really unpacked are counted against a cap per
member and per archive (zip bombs); OS junk (``__MACOSX``, ``.DS_Store``, ``Thumbs.db``) is
skipped. Whatever cannot be used is reported with its reason; the rest is imported.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from engine.data.folder import IMAGE_EXTENSIONS, DatasetError

CAPTION_EXTENSIONS = {".txt", ".caption"}
MAX_UNZIPPED_BYTES = 8 << 30  # 8 GiB: far above any LoRA dataset, far below a zip bomb
MAX_MEMBER_BYTES = 512 << 20  # one image or caption; a larger member is skipped
MAX_CAPTION_BYTES = 1 << 20   # a caption is a line of tags; a megabyte is not one
MAX_NAME_BYTES = 180          # a file name's UTF-8 bytes (file systems allow 255; room for "_12")
# only what image zips use: stored and deflate (bzip2/LZMA members inflate without an output bound)
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_JUNK = {"__macosx", ".ds_store", "thumbs.db", "desktop.ini"}
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
# why a file was not imported; the keys are also catalogue keys (dataset.skip_<key>) for the web app
SKIP_REASONS = {"not_media": "not an image or caption file",
                "unsafe_path": "unsafe path in zip (absolute or '..'): not extracted",
                "symlink": "symbolic link (in a zip, or pointing outside the folder): not imported",
                "encrypted": "encrypted (password-protected) zip member: not extracted",
                "compression": "zip member compressed with a method images do not use (only stored "
                               "and deflate are read): not extracted",
                "corrupt": "damaged zip member (bad checksum or wrong size): not extracted",
                "too_big": f"larger than {MAX_MEMBER_BYTES >> 20} MiB unpacked: not extracted",
                "unreadable": "could not be read: not imported",
                "caption_undecodable": "caption is neither UTF-8 nor UTF-16 text: image imported "
                                       "without it"}


class _TooBig(Exception):
    pass


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


def _cut_utf8(text: str, limit: int) -> str:
    """``text`` shortened to at most ``limit`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def safe_filename(name: str, fallback: str = "file") -> str:
    """A name safe on Windows, macOS and Linux: no path parts, no reserved characters, no
    leading dots, NFC-normalised (unicode is kept: Chinese file names are normal here), and
    short enough in bytes for every file system (a long Chinese name is cut, not refused)."""
    name = unicodedata.normalize("NFC", PurePosixPath(name.replace("\\", "/")).name)
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ext = _cut_utf8(ext, 16)
    stem = _cut_utf8(stem[:120], MAX_NAME_BYTES - 1 - len(ext)).strip() or fallback
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


def _image_name(original: str, src: Path) -> str | None:
    """The safe name an image is imported under, its extension kept, or None for a file that
    is not an image. A name without an image extension (``png``) is sniffed: an image in a
    format we read is kept as ``png.png``."""
    ext = Path(original).suffix.lower()
    clean = safe_filename(original, "image")
    if ext in IMAGE_EXTENSIONS:
        stem = Path(clean).stem if Path(clean).suffix.lower() == ext else clean
        return f"{stem or 'image'}{ext}"
    if ext in CAPTION_EXTENSIONS:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as im:
            sniffed = f".{(im.format or '').lower()}".replace(".jpeg", ".jpg").replace(".tiff", ".tif")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return f"{clean}{sniffed}" if sniffed in IMAGE_EXTENSIONS else None


def _read_caption(src: Path) -> str | None:
    """A caption's text, or None when it is not text (or absurdly long for a caption)."""
    from engine.fileio import decode_user_text

    with open(src, "rb") as fh:
        data = fh.read(MAX_CAPTION_BYTES + 1)
    return decode_user_text(data) if len(data) <= MAX_CAPTION_BYTES else None


def import_files(files: Iterable[Path | tuple[str, Path]], dest: Path) -> ImportReport:
    """Copy images and their captions into ``dest`` (created). Items are paths, or
    (original name, temp path) pairs as browsers upload them; a caption pairs with the image of
    the same stem and is stored as UTF-8. Unsupported or unreadable files are reported, never
    fatal; a name that had to change is reported as renamed."""
    from engine.fileio import atomic_write_bytes

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = ImportReport(dest)
    pairs = [(f[0], Path(f[1])) if isinstance(f, tuple) else (Path(f).name, Path(f)) for f in files]
    images, captions = [], {}
    for original, src in pairs:
        name = _image_name(original, src)
        if name is not None:
            images.append((original, src, name))
        elif Path(original).suffix.lower() in CAPTION_EXTENSIONS:
            captions.setdefault(Path(safe_filename(original)).stem.lower(), (original, src))
        else:
            report.skipped.append((original, "not_media"))
    taken: set[str] = set()
    for original, src, clean in images:
        name = _unique(dest, clean, taken)
        try:
            shutil.copyfile(src, dest / name)
        except OSError:
            (dest / name).unlink(missing_ok=True)
            report.skipped.append((original, "unreadable"))
            continue
        if name != Path(original).name:
            report.renamed.append((original, name))
        report.copied.append(dest / name)
        cap = captions.get(Path(clean).stem.lower())
        if cap:
            text = _read_caption(cap[1])
            if text is None:
                report.skipped.append((cap[0], "caption_undecodable"))
            else:
                atomic_write_bytes((dest / name).with_suffix(".txt"), text.strip().encode("utf-8"))
                report.captions += 1
    return report


def import_folder(src: Path, dest: Path) -> ImportReport:
    """Every image (and caption) directly inside ``src``; subfolders are imported by the caller
    per concept, because each may have its own repeats. A symbolic link that leads outside
    ``src`` is reported and skipped (a link named ``passwd.png`` must not import its target)."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"folder not found: {src}", "import_not_found", path=src)
    inside, links = [], []
    real_root = src.resolve()
    for p in sorted(src.iterdir()):
        if _is_junk([p.name]) or not p.is_file():
            continue
        if p.is_symlink() and not p.resolve().is_relative_to(real_root):
            links.append((p.name, "symlink"))
        else:
            inside.append(p)
    report = import_files(inside, dest)
    report.skipped = links + report.skipped
    return report


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, budget: int) -> int:
    """Stream one member to ``out``, counting the bytes really written (a member's header can
    lie about its size); _TooBig past ``budget`` or the per-member cap. Returns the bytes."""
    limit, written = min(budget, MAX_MEMBER_BYTES), 0
    with zf.open(info) as fin, open(out, "wb") as fout:
        while chunk := fin.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise _TooBig(written > budget)
            fout.write(chunk)
    return written


def import_zip(archive: Path, dest: Path, max_bytes: int = MAX_UNZIPPED_BYTES) -> ImportReport:
    """Extract the images and captions of ``archive`` (flattened) into ``dest``. Each member is
    checked first (path, link, encryption, compression method) and then streamed with its real
    size counted: a damaged or oversized member is reported and skipped, and the whole archive
    is refused once more than ``max_bytes`` came out of it."""
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
        members, declared, refused = [], 0, []
        for info in zf.infolist():
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.is_dir() or _is_junk(parts):
                continue
            reason = None
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                reason = "unsafe_path"
            elif (info.external_attr >> 16) & 0o170000 == 0o120000:
                reason = "symlink"
            elif info.flag_bits & 0x1:
                reason = "encrypted"
            elif info.compress_type not in ZIP_METHODS:
                reason = "compression"
            elif info.file_size > MAX_MEMBER_BYTES:
                reason = "too_big"
            if reason:
                refused.append((info.filename, reason))
                continue
            declared += info.file_size
            if declared > max_bytes:  # honest headers: refused before anything is unpacked
                raise _bomb(archive, max_bytes)
            members.append(info)
        staged, total = [], 0
        for k, info in enumerate(members):
            out = tmp / f"{k:06d}{PurePosixPath(info.filename).suffix.lower()[:16]}"
            try:
                total += _extract(zf, info, out, max_bytes - total)
            except _TooBig as err:
                out.unlink(missing_ok=True)
                if err.args[0]:  # the archive as a whole
                    raise _bomb(archive, max_bytes) from None
                refused.append((info.filename, "too_big"))
                continue
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError, RuntimeError, NotImplementedError):
                out.unlink(missing_ok=True)
                refused.append((info.filename, "corrupt"))
                continue
            staged.append((PurePosixPath(info.filename.replace("\\", "/")).name, out))
        report = import_files(staged, dest)
    report.skipped = refused + report.skipped
    return report


def _bomb(archive: Path, max_bytes: int) -> DatasetError:
    return DatasetError(f"{archive.name} unpacks to more than {max_bytes >> 30} GiB; refused (possible zip bomb)",
                        "import_zip_bomb", name=archive.name, gib=max_bytes >> 30)


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
