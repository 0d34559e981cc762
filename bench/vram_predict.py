"""Predicted GPU memory peaks (engine.system.vram) of each shipped tier for each model family
(SD 1.5 at 512 px, SD 2.x at 768 px, SDXL at 1024 px, Flux.1 at its own 1024 px unless its tier
table lowers it: the tier with its [family.<id>] table), on the real-size architectures (random
weights, fake tensors: no GPU needed).
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
from engine.models import families  # noqa: E402
from engine.models.reference import reference_config_dir  # noqa: E402
from engine.system.hardware import VRAM_TIERS  # noqa: E402
from engine.system.vram import GIB, PRECISION_LABEL, predict_vram  # noqa: E402

FAMILIES = [("SD 1.5", "sd15", "sd15", 512), ("SD 2.x 768-v", "sd2-768-v", "sd2", 768), ("SDXL", "sdxl", "sdxl", 1024),
            ("Flux.1 [dev]", "flux1-dev", "flux1", None)]


def job(family: str, resolution: int | None, **training) -> dict:
    """``resolution`` None: the tier's (Flux's tier tables set it)."""
    dataset = {"path": str(ROOT / "presets/demo/zkz_star")} | ({"resolution": resolution} if resolution else {})
    return {"model": {"base": "embedded", "family": family}, "dataset": dataset,
            "training": training, "output": {"dir": "out", "name": "x"}}


def row(label: str, arch: str, family: str, data: dict, card: float | None) -> str:
    data.setdefault("network", {}).setdefault("dim", 16)
    data["network"].setdefault("alpha", 8.0)
    cfg = parse_config(data)
    start = time.perf_counter()
    p = predict_vram(cfg, reference_config_dir(arch), family)
    took = time.perf_counter() - start
    t, net = cfg.training, cfg.network
    extras = [x for x, on in (("UNet only", getattr(net, "train_unet_only", False)),
                              ("TE outputs cached", t.cache_text_encoder_outputs),
                              ("offload", t.offload_after_caching),
                              (f"base {t.quantize_base}", t.quantize_base != "none")) if on]
    setup = (f"{cfg.dataset.resolution} px, batch {t.batch_size}, dim {getattr(net, 'dim', '-')}, "
             f"{PRECISION_LABEL[t.mixed_precision]}, GC {'on' if t.gradient_checkpointing else 'off'}, "
             f"{cfg.optimizer.type}" + "".join(f", {x}" for x in extras))
    parts = " / ".join(f"{v / GIB:.2f}" for v in (p.weights, p.trainable, p.optimizer, p.activations, p.margin))
    fits = "" if card is None else ("yes" if p.peak_gib <= 0.9 * card else "**no**")
    return (f"| {label} | {setup} | {parts} | **{p.peak_gib:.1f}** | {card or ''} | {fits} | no GPU yet "
            f"| {took:.0f} s |")


def main() -> None:
    print("| Setup | Job | weights / trained+grads / optimizer / activations / margin (GiB) | predicted peak GiB "
          "| smallest card GiB | fits 90% | measured | prediction took |")
    print("|---|---|---|---|---|---|---|---|")
    for label, arch, family, resolution in FAMILIES:
        for name, low, _ in reversed(VRAM_TIERS):
            # (no resolution: the family's own under the tier, which may lower it, as the wizard does)
            below = {} if resolution else {"dataset": {"resolution": families.family(family).default_resolution}}
            print(row(f"tier {name}, {label} LoRA", arch, family, apply_tier(below, name, job(family, resolution)),
                      low))
    print(row("SDXL LoRA dim 16, no tier", "sdxl", "sdxl", job("sdxl", 1024, mixed_precision="bf16"), None))
    for resolution in (512, 1024):
        for kind in ("none", "int8", "nf4"):
            print(row(f"Flux.1 LoRA dim 16 at {resolution} px, bf16, GC, base {kind}", "flux1-dev", "flux1",
                      job("flux1", resolution, mixed_precision="bf16", gradient_checkpointing=True,
                          offload_after_caching=True, quantize_base=kind), None))


if __name__ == "__main__":
    main()
