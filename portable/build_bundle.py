"""Build the portable bundle: one zip with the app, its launchers, the embedded model and a
wheelhouse, so it installs and runs with no internet (the launchers use pip --no-index).

    python portable/build_bundle.py --out dist                  # this OS, CPU PyTorch
    python portable/build_bundle.py --out dist --torch cuda     # NVIDIA build (several GB)
    python portable/build_bundle.py --out dist --platform win_amd64 --python-version 3.11

Wheels are fetched with ``pip download`` (from PyPI / your pip configuration, or a local wheel
cache); they are zipped uncompressed (they are zip files already).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_FILES = ["launcher.py", "launcher.sh", "launcher.bat", "README.md", "requirements.txt",
             "requirements-nodeps.txt"]
APP_DIRS = ["engine", "webapp", "presets", "portable"]
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".venv", "wheelhouse", "dist"}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _tracked(root: Path) -> set[str] | None:
    """Files under version control (so stray local outputs never ship), or None outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.stdout.decode().split("\0")) - {""}


def app_files(root: Path = ROOT) -> list[Path]:
    """What the app needs at run time (no tests, benchmarks, caches or environments)."""
    tracked = _tracked(root)
    files = [root / f for f in APP_FILES if (root / f).is_file()]
    for folder in APP_DIRS:
        files += [p for p in sorted((root / folder).rglob("*"))
                  if p.is_file() and not SKIP_PARTS & set(p.relative_to(root).parts)
                  and p.suffix not in (".pyc", ".tmp")]
    if tracked is not None:
        files = [p for p in files if p.relative_to(root).as_posix() in tracked]
    return files


def _pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split(";")[0].strip()
    raise SystemExit(f"requirements.txt has no pinned {name}")


def download_wheels(dest: Path, torch: str, platform: str | None, python_version: str | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    target = []
    if platform:
        target = ["--platform", platform, "--only-binary=:all:"]
        target += ["--python-version", python_version or f"{sys.version_info.major}.{sys.version_info.minor}"]
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(dest), *target]
    version = _pin("torch")
    wanted = platform or sys.platform
    local = {"cpu": "cpu", "cuda": "cu128"}[torch] if wanted.startswith(("linux", "manylinux", "win")) else ""
    if torch == "cuda" and wanted.startswith(("linux", "manylinux")):
        local = ""  # PyPI's Linux wheel is the CUDA build
    constraints = []
    if local:
        # the one wheel from PyTorch's own index; everything else resolves against it locally
        index = CPU_INDEX if local == "cpu" else f"https://download.pytorch.org/whl/{local}"
        subprocess.run([*pip, "--no-deps", f"torch=={version}+{local}", "--extra-index-url", index], check=True)
        pin = dest / "torch-constraint.txt"
        pin.write_text(f"torch=={version}+{local}\n")
        constraints = ["-c", str(pin), "--find-links", str(dest)]
    subprocess.run([*pip, *constraints, "-r", str(ROOT / "requirements.txt")], check=True)
    subprocess.run([*pip, "--no-deps", "-r", str(ROOT / "requirements-nodeps.txt")], check=True)
    if constraints:
        (dest / "torch-constraint.txt").unlink()
    (dest / "TORCH_VARIANT").write_text(torch)


def write_zip(zip_path: Path, files: list[Path], wheelhouse: Path | None, top: str = "LoRAForge") -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            info = zipfile.ZipInfo.from_file(path, f"{top}/{path.relative_to(ROOT).as_posix()}")
            if path.suffix in (".sh",) or path.name == "launcher.py":
                info.external_attr = (0o755 << 16)  # keep launchers executable after unzip
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as fh:
                zf.writestr(info, fh.read())
        if wheelhouse is not None:
            for wheel in sorted(wheelhouse.iterdir()):
                zf.write(wheel, f"{top}/wheelhouse/{wheel.name}", compress_type=zipfile.ZIP_STORED)
    tmp.replace(zip_path)
    return zip_path


def build_bundle(out_dir: Path, torch: str = "cpu", platform: str | None = None,
                 python_version: str | None = None, wheels: bool = True) -> Path:
    out_dir = Path(out_dir)
    tag = platform or sys.platform
    wheelhouse = out_dir / f"wheelhouse-{tag}-{torch}" if wheels else None
    if wheelhouse is not None:
        download_wheels(wheelhouse, torch, platform, python_version)
    name = f"loraforge-{tag}-{torch}.zip" if wheels else f"loraforge-{tag}-nowheels.zip"
    return write_zip(out_dir / name, app_files(), wheelhouse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="dist")
    p.add_argument("--torch", choices=["cpu", "cuda"], default="cpu",
                   help="PyTorch build in the wheelhouse (cuda: NVIDIA GPUs, several GB)")
    p.add_argument("--platform", help="pip platform tag to build for, e.g. win_amd64, manylinux_2_28_x86_64")
    p.add_argument("--python-version", help="with --platform: the Python the bundle will run on (3.11)")
    p.add_argument("--no-wheels", action="store_true", help="app only (the launchers then install online)")
    args = p.parse_args(argv)
    try:
        path = build_bundle(Path(args.out), args.torch, args.platform, args.python_version, not args.no_wheels)
    except subprocess.CalledProcessError as err:
        print(f"error: pip could not download the wheels ({err}); check the network or pip config",
              file=sys.stderr)
        return 2
    print(f"bundle: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
