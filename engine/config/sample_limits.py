"""The ranges of a sample image's settings, one definition for the job's [sample] section and
for the flags of a prompt line (``--w --h --d --s --l``): a value outside them fails when the job
is loaded, not after hours of training when the first sample is drawn."""
from __future__ import annotations

SAMPLE_LIMITS: dict[str, tuple[float, float]] = {
    "width": (64, 4096),            # pixels, multiples of 8
    "height": (64, 4096),
    "seed": (0, 2**64 - 1),         # what torch.Generator.manual_seed takes
    "steps": (1, 150),
    "cfg_scale": (1.0, 30.0),
}

# images per grid cell (seeds seed .. seed + n - 1, tiled): the grid's and the Compare tab's range
SEEDS_PER_CELL: tuple[int, int] = (1, 16)
