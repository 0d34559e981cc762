#!/usr/bin/env bash
# One click (Linux/macOS): sets up .venv on first run, then starts LoRA Forge. Args go to launcher.py.
exec bash "$(dirname "${BASH_SOURCE[0]}")/portable/launcher.sh" "$@"
