"""Grid throughput: our XYZ grid (base loaded once, LoRA swapped in place, Z cells batched) vs a
naive loop that builds the pipeline from disk and loads the LoRA with diffusers for every cell.

Both make the same cells (checkpoints x weights x prompts, same seed, steps, size) from the same
files; we report cells/s for each and the ratio, alternating the two methods over rounds.

    python bench/grid_speed.py                     # embedded shapes model, its demo LoRA epochs
    python bench/grid_speed.py --rounds 3 --steps 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_checkpoints(out: Path, epochs: int) -> list[Path]:
    import tomllib

    from engine.config.job import parse_config
    from engine.training.loop import train

    job = tomllib.loads((ROOT / "presets/jobs/demo_lora.toml").read_text())
    job["dataset"]["path"] = str(ROOT / job["dataset"]["path"])
    job["output"]["dir"] = str(out)
    job["training"]["epochs"] = epochs
    return train(parse_config(job)).saved


def ours(base: str, ckpts, weights, prompts, steps, size) -> float:
    from engine.generate.grid import GridJob, run_grid
    from engine.models.loader import load_sd_components

    t = time.perf_counter()
    model = load_sd_components(base, local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_grid(model, GridJob(ckpts, prompts, weights, [1], steps=steps, cfg_scale=5.0,
                                width=size, height=size), Path(tmp))
    return time.perf_counter() - t


def naive(base_dir: Path, ckpts, weights, prompts, steps, size) -> float:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    t = time.perf_counter()
    for ckpt in ckpts:
        for w in weights:
            for prompt in prompts:
                pipe = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None,
                                                               torch_dtype=torch.float32)
                pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
                pipe.set_progress_bar_config(disable=True)
                pipe.load_lora_weights(str(ckpt), adapter_name="x")
                pipe.set_adapters(["x"], adapter_weights=[w])
                pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, width=size, height=size,
                     generator=torch.Generator().manual_seed(1))
    return time.perf_counter() - t


def main() -> int:
    from engine.models.loader import EMBEDDED_DIR

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    weights = [0.0, 0.4, 0.6, 0.8, 1.0]
    prompts = ["zkz, a star on a white background", "a red circle on a white background"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = train_checkpoints(Path(tmp), args.epochs)
        cells = len(ckpts) * len(weights) * len(prompts)
        rates = {"ours": [], "naive": []}
        for _ in range(args.rounds):
            rates["ours"].append(cells / ours("embedded", ckpts, weights, prompts, args.steps, 64))
            rates["naive"].append(cells / naive(EMBEDDED_DIR, ckpts, weights, prompts, args.steps, 64))
    o, n = statistics.median(rates["ours"]), statistics.median(rates["naive"])
    ratios = [a / b for a, b in zip(rates["ours"], rates["naive"])]
    print("| cells | steps | ours cells/s | naive cells/s | ours / naive (per round) |")
    print(f"| {cells} | {args.steps} | {o:.2f} | {n:.2f} | {statistics.median(ratios):.1f}x "
          f"({', '.join(f'{r:.1f}' for r in ratios)}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
