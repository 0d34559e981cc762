"""Aspect-ratio bucketing: train portrait and landscape images without cropping them square.

Buckets are (width, height) pairs in steps of 64 whose area stays within resolution², so every
bucket costs about the same memory. Each image goes to the bucket whose aspect ratio is nearest
its own, then is scaled to cover the bucket and centre-cropped (losing only a sliver).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

STEP = 64


def make_buckets(resolution: int, min_size: int = 256, max_size: int = 1024, step: int = STEP
                 ) -> list[tuple[int, int]]:
    """All (w, h) with w, h multiples of ``step`` in [min_size, max_size] and w*h <= resolution²,
    keeping for each width the tallest height that fits (so no bucket wastes area)."""
    if min_size % step or max_size % step or resolution % step:
        raise ValueError(f"resolution, min and max bucket size must be multiples of {step}")
    if min_size > resolution or max_size < resolution:
        raise ValueError("need min_size <= resolution <= max_size")
    area = resolution * resolution
    buckets = set()
    for w in range(min_size, max_size + 1, step):
        h = min(max_size, (area // w) // step * step)
        if h >= min_size:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ar = width / height
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - ar), -b[0] * b[1]))


def no_upscale_bucket(width: int, height: int, resolution: int, step: int = STEP) -> tuple[int, int]:
    """For an image smaller than the bucket area: its own size, rounded down to ``step``
    (never enlarged), so small images are not blown up into blur."""
    scale = min(1.0, (resolution * resolution / (width * height)) ** 0.5)
    w = max(step, int(width * scale) // step * step)
    h = max(step, int(height * scale) // step * step)
    return w, h


@dataclass
class BucketAssignment:
    buckets: dict[str, tuple[int, int]]  # image key -> (w, h)

    def counts(self) -> Counter:
        return Counter(self.buckets.values())

    def report(self) -> str:
        lines = [f"{len(self.buckets)} images in {len(self.counts())} buckets:"]
        for (w, h), n in sorted(self.counts().items()):
            lines.append(f"  {w}x{h} (aspect {w / h:.2f}): {n} image{'s' if n != 1 else ''}")
        return "\n".join(lines)


def assign_buckets(sizes: dict[str, tuple[int, int]], resolution: int, min_size: int = 256,
                   max_size: int = 1024, no_upscale: bool = False) -> BucketAssignment:
    buckets = make_buckets(resolution, min_size, max_size)
    out = {}
    for key, (w, h) in sizes.items():
        if no_upscale and w * h < resolution * resolution:
            out[key] = no_upscale_bucket(w, h, resolution)
        else:
            out[key] = nearest_bucket(w, h, buckets)
    return BucketAssignment(out)
