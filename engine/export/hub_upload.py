"""Upload an exported card folder to the Hugging Face Hub (a model repo), through huggingface_hub.

The token comes from the caller (UI field / --token), else ``HF_TOKEN``, else the token saved by
``huggingface-cli login``. It is never written to disk by us or put in a card.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class UploadError(RuntimeError):
    pass


def resolve_token(token: str | None = None) -> str:
    from huggingface_hub import get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise UploadError("no Hugging Face token: paste one (huggingface.co/settings/tokens, "
                          "'write' access) or set HF_TOKEN")
    return token


def upload_card(folder: Path, repo_id: str, token: str | None = None, private: bool = False,
                endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Create ``repo_id`` if needed and commit the folder's files; returns the commit URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise UploadError(f"{folder}: not an exported card folder (no README.md); export the card first")
    if not _REPO_ID.match(repo_id):
        raise UploadError(f"repository id must look like 'user/name' (got {repo_id!r})")
    if constants.is_offline_mode():
        raise UploadError("offline mode is on (HF_HUB_OFFLINE=1): unset it to upload")
    api = HfApi(endpoint=endpoint, token=resolve_token(token))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {folder.name} from LoRA Forge")
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        hint = " (check that the token has write access)" if status in (401, 403) else ""
        raise UploadError(f"upload to {repo_id} failed{hint}: {err}") from None
    return str(info.commit_url if hasattr(info, "commit_url") else info)
