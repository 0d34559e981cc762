"""Where LoRA Forge keeps its own files (caches), overridable for portable installs and tests."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("LORAFORGE_CACHE") or Path.home() / ".cache" / "loraforge"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
