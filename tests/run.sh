#!/usr/bin/env bash
# The test command: sets up the environment (with test tools) and runs the whole suite.
set -uo pipefail
APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$APP_DIR"
bash portable/setup_env.sh --dev || exit 1
# the browser tests drive Debian's chromium (never `playwright install`), with a CJK font so the
# Chinese screenshots show characters
if { ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/fonts/truetype/wqy ]; } \
        && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    pkgs="chromium fonts-wqy-microhei"
    apt-get install -y -q $pkgs >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $pkgs >/dev/null 2>&1; } \
        || echo "could not install $pkgs; the browser tests need chromium (LORAFORGE_SKIP_BROWSER=1 skips them)"
fi
VPY="${LORAFORGE_VENV:-$APP_DIR/.venv}/bin/python"
# lint (ruff: pyflakes, pycodestyle, import order) and types (mypy on the modules pyproject.toml
# lists); a finding fails the run, after the suite has run too
"$VPY" -m ruff check . && "$VPY" -m mypy
lint=$?
# one worker per core (LORAFORGE_TEST_WORKERS=0: one process), each torch on one thread; a test
# module's tests stay together in one worker (module fixtures are trained once); the slowest
# twelve are listed, to keep the suite within its time
workers="${LORAFORGE_TEST_WORKERS:-auto}"
if [ "$workers" = "0" ]; then
    "$VPY" -m pytest -q --durations=12 "$@"
else
    OMP_NUM_THREADS=1 "$VPY" -m pytest -q --durations=12 -n "$workers" --dist loadscope "$@"
fi
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests were collected"; rc=0; fi
if [ "$lint" -ne 0 ]; then echo "ruff or mypy found problems (see above)"; [ "$rc" -eq 0 ] && rc=$lint; fi
exit "$rc"
