"""Aspect-ratio buckets: every image gets a bucket, the report matches, no-upscale keeps size."""
from __future__ import annotations

import pytest

from engine.data.buckets import assign_buckets, make_buckets, nearest_bucket


def test_buckets_are_multiples_of_64_within_area():
    buckets = make_buckets(512, 256, 1024)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert all((h, w) in buckets for w, h in buckets)  # portrait and landscape alike


def test_nearest_aspect():
    buckets = make_buckets(512, 256, 1024)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert nearest_bucket(1920, 1080, buckets) == (640, 384)
    assert nearest_bucket(1080, 1920, buckets) == (384, 640)


def test_every_image_assigned_and_report_matches():
    sizes = {"a": (1024, 1024), "b": (1920, 1080), "c": (1080, 1920), "d": (2000, 2000), "e": (300, 200)}
    result = assign_buckets(sizes, 512)
    assert set(result.buckets) == set(sizes)
    counts = result.counts()
    assert counts[(512, 512)] == 2 and sum(counts.values()) == 5
    report = result.report()
    assert report.splitlines()[0] == "5 images in 3 buckets:"
    assert "  512x512 (aspect 1.00): 2 images" in report


def test_no_upscale_keeps_small_images_small():
    result = assign_buckets({"small": (300, 200), "big": (1920, 1080)}, 512, no_upscale=True)
    assert result.buckets["small"] == (256, 192)
    assert result.buckets["big"] == (640, 384)


@pytest.mark.parametrize("args", [(500, 256, 1024), (512, 640, 1024), (512, 256, 448)])
def test_bad_bucket_settings(args):
    with pytest.raises(ValueError):
        make_buckets(*args)
