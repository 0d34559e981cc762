"""Atomic file writes (a crash mid-save must never leave a half-written model behind), and the
text files people hand us."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename over ``path`` (same directory, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; a saved model should not be private
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` for the outputs of the
    job called ``name`` when a run was killed mid-write (``.name.safetensors.k3j_x9a2.tmp``,
    ``.name_loss.csv.*.tmp``, epoch files, embeddings): only that naming, only this folder, so
    another job's files and the user's own are never touched."""
    own = re.compile(rf"^\.{re.escape(name)}(?:-\d{{6}})?(?:-neg)?(?:\.[a-z]+|_loss\.(?:csv|png)|_job\.toml)"
                     r"\.[a-z0-9_]{8}\.tmp$")
    removed = []
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            if own.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def decode_user_text(data: bytes) -> str | None:
    """A text file a person made (caption, preset, job): UTF-8 with or without a BOM, or UTF-16
    with its BOM as Windows Notepad saves it; None when it is neither."""
    codec = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return None
