"""Where captioning models come from: a local folder, or a hub repo id through huggingface_hub
(from the local cache when offline). Same rules as base models: a clear message, no surprise
downloads when the user said offline."""
from __future__ import annotations

from pathlib import Path

from engine.i18n import Explained


class CaptionModelError(Explained, RuntimeError):
    """The captioning model cannot be found or used; the message says what to do."""


def resolve_files(source: str, files: list[str], local_files_only: bool = False,
                  cache_dir: Path | None = None) -> dict[str, Path]:
    """Paths of ``files`` from a folder ``source``, or downloaded/cached from the hub repo ``source``."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CaptionModelError(f"{folder} is missing {', '.join(missing)}", "caption_missing_files",
                                    folder=folder, files=", ".join(missing))
        return {f: folder / f for f in files}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return {f: Path(hf_hub_download(source, f, local_files_only=local_files_only, cache_dir=cache_dir))
                for f in files}
    except LocalEntryNotFoundError:
        raise CaptionModelError(
            f"captioning model {source!r} is not in the local cache and cannot be downloaded "
            "(offline?); download it once while online, or give a local folder", "caption_offline",
            source=source) from None
    except Exception as err:  # repo missing, bad id, network down
        raise CaptionModelError(f"cannot get {source!r}: {err}", "caption_fetch", source=source, error=err) from None


def resolve_folder(source: str, local_files_only: bool = False, cache_dir: Path | None = None) -> Path:
    """A whole model folder (transformers models): the folder itself, or a hub snapshot."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, local_files_only=local_files_only, cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        raise CaptionModelError(
            f"captioning model {source!r} is not in the local cache and cannot be downloaded "
            "(offline?); download it once while online, or give a local folder", "caption_offline",
            source=source) from None
    except Exception as err:
        raise CaptionModelError(f"cannot get {source!r}: {err}", "caption_fetch", source=source, error=err) from None
