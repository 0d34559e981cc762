#!/usr/bin/env bash
# One click: set up the environment if needed, then start LoRA Forge (args go to launcher.py).
set -euo pipefail
APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$APP_DIR/portable/setup_env.sh"
exec "${LORAFORGE_VENV:-$APP_DIR/.venv}/bin/python" "$APP_DIR/launcher.py" "$@"
