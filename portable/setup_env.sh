#!/usr/bin/env bash
# Create (or reuse) the virtual environment next to the app and install what it needs.
# Idempotent and quick on a second run: it skips pip when the requirement files are unchanged.
#   bash portable/setup_env.sh          runtime only
#   bash portable/setup_env.sh --dev    runtime + test tools
#   bash portable/setup_env.sh --print-torch-variant   which PyTorch build it would install
# A bundle built by portable/build_bundle.py has a wheelhouse/ folder: then everything installs
# from it, offline (pip --no-index). Otherwise PyTorch is the CUDA build when nvidia-smi finds a
# GPU and the smaller CPU build when not (override: LORAFORGE_TORCH=cuda|cpu).
set -euo pipefail
APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORAFORGE_VENV:-$APP_DIR/.venv}"
PY="${PYTHON:-python3}"
WHEELHOUSE="$APP_DIR/wheelhouse"
DEV="${1:-}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "LoRA Forge needs Python 3.11 or newer ('$PY' was not found). Install it from python.org" >&2
  echo "or your package manager (Debian/Ubuntu: sudo apt install python3 python3-venv), then run this again." >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
  echo "LoRA Forge needs Python 3.11-3.13; '$PY' is $("$PY" -c 'import sys; print(sys.version.split()[0])')." >&2
  echo "Install a supported Python, or point PYTHON=/path/to/python3.11 at one." >&2
  exit 1
fi

torch_variant() {
  if [ -n "${LORAFORGE_TORCH:-}" ]; then echo "$LORAFORGE_TORCH"
  elif [ -f "$WHEELHOUSE/TORCH_VARIANT" ]; then cat "$WHEELHOUSE/TORCH_VARIANT"
  elif [ "$(uname -s)" = "Darwin" ]; then echo "default"   # macOS wheels: CPU + Apple GPU in one
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "cuda"
  else echo "cpu"; fi
}
VARIANT="$(torch_variant)"
if [ "$DEV" = "--print-torch-variant" ]; then echo "$VARIANT"; exit 0; fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV"
  if ! "$PY" -m venv "$VENV"; then
    echo "could not create a virtual environment; on Debian/Ubuntu: sudo apt install python3-venv" >&2
    exit 1
  fi
fi
VPY="$VENV/bin/python"

files=("$APP_DIR/requirements.txt" "$APP_DIR/requirements-nodeps.txt")
[ "$DEV" = "--dev" ] && files+=("$APP_DIR/requirements-dev.txt")
stamp="$VENV/.loraforge-installed-$( (cat "${files[@]}"; echo "$VARIANT") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi

pip_install() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
TORCH_PIN="$(grep -E '^torch==' "$APP_DIR/requirements.txt" | cut -d= -f3)"
if [ -d "$WHEELHOUSE" ]; then
  echo "installing LoRA Forge's packages from the bundled wheelhouse (offline, torch $VARIANT; a few minutes)"
  OFFLINE=(--no-index --find-links "$WHEELHOUSE")
  pip_install "${OFFLINE[@]}" -r "$APP_DIR/requirements.txt"
  pip_install "${OFFLINE[@]}" --no-deps -r "$APP_DIR/requirements-nodeps.txt"
  [ "$DEV" = "--dev" ] && pip_install "${OFFLINE[@]}" -r "$APP_DIR/requirements-dev.txt"
else
  echo "installing LoRA Forge's packages (torch $VARIANT build; a few minutes the first time)"
  pip_install --upgrade pip
  if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_PIN' else 1)" 2>/dev/null; then
    case "$VARIANT" in
      # only the torch wheel from PyTorch's index; its dependencies come from PyPI below
      cpu) pip_install --no-deps "torch==$TORCH_PIN+cpu" --extra-index-url https://download.pytorch.org/whl/cpu ;;
      *) pip_install "torch==$TORCH_PIN" ;;  # PyPI's Linux wheel is the CUDA build
    esac
  fi
  pip_install -r "$APP_DIR/requirements.txt"
  pip_install --no-deps -r "$APP_DIR/requirements-nodeps.txt"
  [ "$DEV" = "--dev" ] && pip_install -r "$APP_DIR/requirements-dev.txt"
fi
if ! "$VPY" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"; then
  echo "PyTorch was installed but does not import (see the error above). Delete $VENV and run" >&2
  echo "this again; if it persists, set LORAFORGE_TORCH=cpu to use the CPU build." >&2
  exit 1
fi
touch "$stamp"
