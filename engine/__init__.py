"""LoRA Forge's training engine: no web UI in here (webapp/ and launcher.py sit on top of it).
See docs/ARCHITECTURE.md for how a job becomes a file."""

__version__ = "0.1.0"
VERSION_KEY = "loraforge_version"  # the metadata key every file we write carries it under
