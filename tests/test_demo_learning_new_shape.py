"""The shipped demo LoRA recipe learns a concept of the user's own that the base cannot draw: a
green cross (the base knows circles, squares, triangles and stars), 12 images written here, the
demo job with only the dataset changed. For three training seeds, counted as in
test_demo_learning (engine.demo.learning: 8 sampling seeds, 20 Euler a steps, CFG 5)."""
from __future__ import annotations

import pytest
from conftest import green_cross_score

from engine.demo.learning import TRAINING_SEEDS


@pytest.fixture(scope="module", params=TRAINING_SEEDS, ids=[f"seed{s}" for s in TRAINING_SEEDS])
def cross(request, tmp_path_factory):
    return green_cross_score("demo_lora", request.param, tmp_path_factory)


def test_a_new_shape_is_drawn_for_most_sampling_seeds(cross):
    """Measured for seeds 42 / 7 / 123: 6 / 6 / 7 of 8 green crosses at weight 1, none at 0 (the
    recipe before the cosine schedule and conv_alpha 8: 8 / 4 / 5)."""
    assert cross.hits[1.0] >= 5 and cross.hits[0.0] == 0, cross.line()


def test_the_new_shape_does_not_replace_the_square(cross):
    """"a blue square on a white background" (no trigger) stays a square: measured 8 / 7 / 8 of 8
    (before: 8 / 8 / 0, seed 123 turned every square into a cross)."""
    assert cross.kept[0.0] == 8 and cross.kept[1.0] >= 6, cross.line()
