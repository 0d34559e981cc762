#!/usr/bin/env bash
# Create (or reuse) the virtual environment next to the app and install what it needs.
# Idempotent and quick on a second run: it skips pip when the requirement files are unchanged.
#   bash portable/setup_env.sh          runtime only
#   bash portable/setup_env.sh --dev    runtime + test tools
set -euo pipefail
APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORAFORGE_VENV:-$APP_DIR/.venv}"
PY="${PYTHON:-python3}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "LoRA Forge needs Python 3.10-3.12 ('$PY' was not found). Install it from python.org" >&2
  echo "or your package manager, then run this again." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

files=("$APP_DIR/requirements.txt" "$APP_DIR/requirements-nodeps.txt")
[ "${1:-}" = "--dev" ] && files+=("$APP_DIR/requirements-dev.txt")
stamp="$VENV/.loraforge-installed-$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q -r "$APP_DIR/requirements.txt"
  "$VPY" -m pip install -q --no-deps -r "$APP_DIR/requirements-nodeps.txt"
  [ "${1:-}" = "--dev" ] && "$VPY" -m pip install -q -r "$APP_DIR/requirements-dev.txt"
  "$VPY" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
  touch "$stamp"
fi
