"""Fingerprints of what the demo jobs write, to show a refactor changed no output: each demo job
(and a few method variants on the embedded model) trains a few steps into a temp folder; per file
we print the tensors' hash (AutoV3 for .safetensors, a hash of every tensor for .pt) and the sorted
metadata keys. Run it before and after a change and diff the two outputs.

    python tools/output_fingerprints.py > before.txt
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (job file, extra settings): the demo jobs plus the methods no demo job uses
VARIANTS = [("demo_lora.toml", {}), ("demo_loha.toml", {}), ("demo_ti.toml", {}),
            ("demo_lora.toml", {"network": {"type": "lokr", "dim": 4, "alpha": 2.0}}),
            ("demo_lora.toml", {"network": {"type": "locon", "dim": 4, "alpha": 2.0}}),
            ("demo_lora.toml", {"network": {"type": "hypernetwork"}, "optimizer": {"lr": 1e-5}}),
            ("demo_lora.toml", {"network": {"type": "dreamartist", "token": "zkzart"}}),
            ("demo_lora.toml", {"network": {"type": "dreambooth", "save_diffusers": False}})]


def tensor_hash(path: Path) -> str:
    if path.suffix == ".safetensors":
        from engine.export.hashes import file_digests

        return "AutoV3 " + str(file_digests(path, True)[2])
    import torch

    digest = hashlib.sha256()

    def walk(value, key=""):
        if isinstance(value, torch.Tensor):
            digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(value[k], f"{key}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")

    walk(torch.load(path, map_location="cpu", weights_only=True))
    return "tensors " + digest.hexdigest()[:16]


def metadata_keys(path: Path) -> str:
    if path.suffix != ".safetensors":
        return "-"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return ",".join(sorted((f.metadata() or {}).keys()))


def main() -> None:
    from engine.config.job import load_config, parse_config
    from engine.config.tiers import deep_merge
    from engine.training.loop import train

    for job_file, extra in VARIANTS:
        base = load_config(ROOT / "presets" / "jobs" / job_file).model_dump(mode="json", exclude_none=True)
        net = extra.get("network")
        if net:
            base["network"] = net  # a method's own fields replace the demo's
        with tempfile.TemporaryDirectory() as out:
            data = deep_merge(base, {k: v for k, v in extra.items() if k != "network"})
            data = deep_merge(data, {"training": {"max_steps": 3, "epochs": 1}, "sample": {"prompts": []},
                                     "output": {"dir": out, "name": "fp", "save_state": False}})
            train(parse_config(data))
            for path in sorted(Path(out).rglob("*")):
                if path.suffix in (".safetensors", ".pt") and "state" not in path.parts[-2]:
                    print(f"{job_file} {net['type'] if net else ''} {path.name}: {tensor_hash(path)} "
                          f"| {metadata_keys(path)}", flush=True)


if __name__ == "__main__":
    main()
