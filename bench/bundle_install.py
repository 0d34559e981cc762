"""Portable bundle: how long building the offline zip, the first start (venv + install from the
bundled wheelhouse, no network) and a second start take, and how big the zip is.

The first and second start run `portable/setup_env.sh` of the unzipped bundle with pip's own
configuration and any index cut off, exactly as tests/test_bundle.py does; a second start must
not reinstall anything.

    python bench/bundle_install.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from portable.build_bundle import build_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        bundle = build_bundle(tmp / "dist", torch="cpu")
        built = time.perf_counter() - t0
        shutil.unpack_archive(bundle, tmp / "user")
        app = tmp / "user" / "LoRAForge"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "LORAFORGE_", "VIRTUAL_ENV"))}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
                   PYTHON=shutil.which("python3") or sys.executable)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run(["bash", str(app / "portable" / "setup_env.sh")], env=env, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t0)
        print(f"bundle: {bundle.stat().st_size / 2**20:.0f} MiB, built in {built:.1f} s")
        print(f"first start (venv + offline install): {times[0]:.1f} s")
        print(f"second start (nothing to install): {times[1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
