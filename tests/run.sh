#!/usr/bin/env bash
# The test command: sets up the environment (with test tools) and runs the whole suite.
set -uo pipefail
APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$APP_DIR"
bash portable/setup_env.sh --dev || exit 1
"${LORAFORGE_VENV:-$APP_DIR/.venv}/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests were collected"; exit 0; fi
exit "$rc"
