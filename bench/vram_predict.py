"""Predicted GPU memory peaks (engine.system.vram) of each shipped tier and of common setups, on
the real-size SD 1.5 and SDXL architectures (random weights, fake tensors: no GPU needed).
Prints a Markdown table for BENCHMARKS.md; the measured column stays "no GPU yet" until
bench/train_bench.py runs on a GPU.

    python bench/vram_predict.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config.job import parse_config  # noqa: E402
from engine.config.tiers import apply_tier  # noqa: E402
from engine.models.reference import reference_config_dir  # noqa: E402
from engine.system.hardware import VRAM_TIERS  # noqa: E402
from engine.system.vram import GIB, PRECISION_LABEL, predict_vram  # noqa: E402


def job(resolution: int, **training) -> dict:
    return {"model": {"base": "embedded"}, "dataset": {"path": str(ROOT / "presets/demo/zkz_star"),
                                                        "resolution": resolution},
            "network": {"dim": 16, "alpha": 8}, "training": training, "output": {"dir": "out", "name": "x"}}


def row(label: str, arch: str, family: str, data: dict, card: float | None) -> str:
    cfg = parse_config(data)
    start = time.perf_counter()
    p = predict_vram(cfg, reference_config_dir(arch), family)
    took = time.perf_counter() - start
    t = cfg.training
    setup = (f"{family} {cfg.dataset.resolution} px, batch {t.batch_size}, {PRECISION_LABEL[t.mixed_precision]}, "
             f"GC {'on' if t.gradient_checkpointing else 'off'}, {cfg.optimizer.type}")
    parts = " / ".join(f"{v / GIB:.2f}" for v in (p.weights, p.trainable, p.optimizer, p.activations, p.margin))
    fits = "" if card is None else ("yes" if p.peak_gib <= 0.9 * card else "**no**")
    return (f"| {label} | {setup} | {parts} | **{p.peak_gib:.1f}** | {card or ''} | {fits} | no GPU yet "
            f"| {took:.0f} s |")


def main() -> None:
    print("| Setup | Job | weights / trained+grads / optimizer / activations / margin (GiB) | predicted peak GiB "
          "| smallest card GiB | fits 90% | measured | prediction took |")
    print("|---|---|---|---|---|---|---|---|")
    for name, low, _ in reversed(VRAM_TIERS):
        print(row(f"tier {name}, SD 1.5 LoRA", "sd15", "sd15", apply_tier({}, name, job(512)), low))
    for name, low, _ in reversed(VRAM_TIERS):
        print(row(f"tier {name} as it is, SDXL LoRA", "sdxl", "sdxl", apply_tier({}, name, job(1024)), low))
    print(row("SDXL LoRA, plain", "sdxl", "sdxl", job(1024, mixed_precision="bf16"), None))
    print(row("SDXL LoRA, checkpointing", "sdxl", "sdxl",
              job(1024, mixed_precision="bf16", gradient_checkpointing=True), None))


if __name__ == "__main__":
    main()
