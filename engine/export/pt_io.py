"""``.pt`` files that AUTOMATIC1111's safe loader accepts.

A1111 checks every ``.pt`` before unpickling it (its "safe unpickle"): each member of the zip
archive must be ``<folder>/data.pkl``, ``<folder>/version`` or ``<folder>/data/<n>``, and the
pickle may name only a few globals (tensor rebuilding, storage types, ``OrderedDict``). Recent
PyTorch adds ``.format_version``, ``.storage_alignment``, ``byteorder`` and
``.data/serialization_id`` to every archive, and A1111 then refuses the file as "possibly
malicious". :func:`save_pt` writes what ``torch.save`` writes, without those members, with the
model's name as the archive folder (``torch.save`` to a path uses the temporary file's name),
and with each tensor record still aligned to 64 bytes for memory-mapped loading.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

from engine import VERSION_KEY, __version__
from engine.fileio import atomic_write

A1111_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")  # its allowed member names
_ALIGN = 64


def archive_folder(name: str) -> str:
    """The archive's folder: the model name, reduced to characters every reader takes."""
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._") or "archive"
    return folder[:100]


def _aligned(info: zipfile.ZipInfo, offset: int) -> zipfile.ZipInfo:
    """``info`` with an extra field that puts its data at a multiple of 64 bytes (as torch does)."""
    start = offset + 30 + len(info.filename.encode("utf-8"))
    pad = (-(start + 4)) % _ALIGN
    info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
    return info


def save_pt(obj: Any, path: Path, name: str) -> Path:
    """``torch.save(obj)`` as an A1111-safe archive named ``name`` at ``path`` (atomically). A
    dict gets our version under a string key (A1111 and ComfyUI read only the keys they know)."""
    import torch

    if isinstance(obj, dict) and VERSION_KEY not in obj:
        obj = {**obj, VERSION_KEY: __version__}

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    folder = archive_folder(name)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src:
        records = [(f"{folder}/{info.filename.split('/', 1)[1]}", src.read(info)) for info in src.infolist()]
    records = [(member, data) for member, data in records if A1111_MEMBER.match(member)]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as out:
            for member, data in records:
                info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
                out.writestr(_aligned(info, fh.tell()), data)
    return atomic_write(Path(path), write)
