"""Do the demo recipes learn for any training seed, and how much do they bleed? Before/after.

Trains each shipped demo job (and the recipe it replaced) with several training seeds on the
embedded model, then counts with engine.demo.learning: images showing the concept at weight 1
and 0 (8 sampling seeds), control images ("a blue square on a white background", no trigger)
still drawn as a square at weight 1, and the control's mean pixel change (bleed, 0-100). Prints
a Markdown table for BENCHMARKS.md.

    python bench/demo_learning.py                       # every variant, seeds 42 7 123
    python bench/demo_learning.py --only demo_lora --seeds 42 7 123 1 2
    python bench/demo_learning.py --only demo_lora --match shipped
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.demo.learning import (  # noqa: E402
    GREEN_CROSS,
    PURPLE_CROSS,
    PURPLE_STAR,
    TRAINING_SEEDS,
    train_and_score,
)

# (label, demo job, concept, job overrides); the "before" and "previous" rows are the recipes of
# earlier releases, rebuilt from today's job by overriding what changed
PREVIOUS = {"scheduler": {"type": "constant"}, "network": {"conv_alpha": 4.0}}  # the LoCon demo until now
BEFORE = {"dataset": {"prior_preservation": False}, "training": {"epochs": 4}}
LOHA_PREVIOUS = {"scheduler": {"type": "constant"}, "network": {"conv_alpha": 2.0}, "optimizer": {"lr": 2e-3},
                 "training": {"epochs": 6}}
VARIANTS = [
    ("LoCon, before: 4 epochs, no prior preservation", "demo_lora", PURPLE_STAR, {**PREVIOUS, **BEFORE}),
    ("LoCon, previous: constant rate, conv_alpha 4", "demo_lora", PURPLE_STAR, PREVIOUS),
    ("LoCon, shipped", "demo_lora", PURPLE_STAR, {}),
    ("LoCon, before, green cross", "demo_lora", GREEN_CROSS, {**PREVIOUS, **BEFORE}),
    ("LoCon, previous, green cross", "demo_lora", GREEN_CROSS, PREVIOUS),
    ("LoCon, shipped, green cross", "demo_lora", GREEN_CROSS, {}),
    ("LoCon, shipped, purple cross", "demo_lora", PURPLE_CROSS, {}),
    ("LoHa, before: 4 epochs, no prior preservation", "demo_loha", PURPLE_STAR, {**LOHA_PREVIOUS, **BEFORE}),
    ("LoHa, previous: 6 epochs at a constant rate 2e-3, conv_alpha 2", "demo_loha", PURPLE_STAR, LOHA_PREVIOUS),
    ("LoHa, shipped", "demo_loha", PURPLE_STAR, {}),
    ("LoHa, previous, green cross", "demo_loha", GREEN_CROSS, LOHA_PREVIOUS),
    ("LoHa, shipped, green cross", "demo_loha", GREEN_CROSS, {}),
    ("LoHa, shipped, purple cross", "demo_loha", PURPLE_CROSS, {}),
    ("Hypernetwork, 8 epochs at a constant rate", "demo_hypernetwork", PURPLE_STAR,
     {"scheduler": {"type": "constant"}, "training": {"epochs": 8}}),
    ("Hypernetwork, shipped", "demo_hypernetwork", PURPLE_STAR, {}),
    ("Hypernetwork, shipped, green cross", "demo_hypernetwork", GREEN_CROSS, {}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(TRAINING_SEEDS))
    ap.add_argument("--only", default="", help="only variants of this demo job")
    ap.add_argument("--match", default="", help="only variants whose label holds this text")
    args = ap.parse_args(argv)
    print("| recipe | training seed | concept at 1 | at 0 | control kept at 1 | bleed | s (train + count) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {c.name: c.write(Path(tmp) / c.name.replace(" ", "-")) for c in (GREEN_CROSS, PURPLE_CROSS)}
        for label, name, concept, overrides in VARIANTS:
            if (args.only and name != args.only) or args.match not in label:
                continue
            for seed in args.seeds:
                start = time.perf_counter()
                s, _ = train_and_score(name, seed, Path(tmp) / f"{name}-{seed}-{len(label)}", concept,
                                       datasets.get(concept.name), overrides)
                took = time.perf_counter() - start
                print(f"| {label} | {seed} | {s.hits[1.0]}/{s.seeds} | {s.hits[0.0]}/{s.seeds} | "
                      f"{s.kept[1.0]}/{s.seeds} | {s.bleed:.1f} | {took:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
