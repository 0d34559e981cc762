"""The model hashes A1111 and Civitai show, computed the way they compute them."""
from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """AutoV2: sha256 of the whole file (A1111/Civitai display its first 10 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of a large base model, remembered by path+size+mtime in our cache folder (hashing
    2-7 GB takes a while and users train on the same base many times). Never writes beside
    the user's model."""
    import json

    from engine.paths import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    store = cache_dir() / "model_hashes.json"
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = sha256_file(path)
        try:
            from engine.fileio import atomic_write_bytes
            atomic_write_bytes(store, json.dumps(table, indent=0).encode())
        except OSError:
            pass  # a read-only cache only costs time
    return table[key]


LEGACY_SPAN = (0x100000, 0x10000)  # A1111's old short hash: 64 KiB read at 1 MiB


def legacy_hash_bytes(data: bytes) -> str:
    """:func:`legacy_hash` of serialized bytes (kohya's ``sshs_legacy_hash``; of nothing for a
    file smaller than 1 MiB, as there)."""
    start, size = LEGACY_SPAN
    return hashlib.sha256(data[start:start + size]).hexdigest()[:8]


def safetensors_data_hash(data: bytes) -> str:
    """AutoV3 / addnet hash of serialized safetensors bytes: sha256 of what follows the header,
    so it does not change when only the metadata changes."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_len:]).hexdigest()


def safetensors_file_data_hash(path: Path) -> str:
    """AutoV3 of a safetensors file on disk (stored as ``sshs_model_hash``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + header_len)
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: Path, safetensors: bool) -> tuple[str, int, str | None]:
    """(sha256 of the file, its CRC32, sha256 of the safetensors data after the header or None)
    in one pass over the file: a checkpoint is gigabytes, so a model card reads it once."""
    whole, data, crc = hashlib.sha256(), hashlib.sha256() if safetensors else None, 0
    with open(path, "rb") as fh:
        head = fh.read(8)
        whole.update(head)
        crc = zlib.crc32(head, crc)
        skip = 8 + struct.unpack("<Q", head)[0] - len(head) if data is not None else None
        while chunk := fh.read(_CHUNK):
            whole.update(chunk)
            crc = zlib.crc32(chunk, crc)
            if data is not None:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                data.update(chunk[skip:])
                skip = 0
    return whole.hexdigest(), crc, data.hexdigest() if data is not None else None


def legacy_hash(path: Path) -> str:
    """A1111's old short hash of a file: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits
    (Civitai's AutoV1; kohya's ``ss_sd_model_hash`` of the base model)."""
    start, size = LEGACY_SPAN
    with open(path, "rb") as fh:
        fh.seek(start)
        return hashlib.sha256(fh.read(size)).hexdigest()[:8]
