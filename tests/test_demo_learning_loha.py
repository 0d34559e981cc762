"""The shipped LoHa demo recipe (presets/jobs/demo_loha.toml) learns a concept of the user's own
that the base cannot draw: the green cross of test_demo_learning_new_shape, the LoHa job with
only the dataset changed, for three training seeds. Counted with engine.demo.learning (8
sampling seeds, 20 Euler a steps, CFG 5). Its purple star (a new colour) is learned for 8 of 8
with every seed (bench/demo_learning.py; README); the new shape is the harder half, so it is the
one trained here (12 epochs of LoHa per seed are the suite's slowest module)."""
from __future__ import annotations

import pytest
from conftest import green_cross_score

from engine.demo.learning import TRAINING_SEEDS


@pytest.fixture(scope="module", params=TRAINING_SEEDS, ids=[f"seed{s}" for s in TRAINING_SEEDS])
def cross(request, tmp_path_factory):
    return green_cross_score("demo_loha", request.param, tmp_path_factory)


def test_loha_draws_a_new_shape_for_most_sampling_seeds(cross):
    """Measured for seeds 42 / 7 / 123: 6 / 7 / 6 of 8 green crosses at weight 1, none at 0 (the
    recipe before 12 epochs on a cosine schedule: 3 / 2 / 5)."""
    assert cross.hits[1.0] >= 5 and cross.hits[0.0] == 0, cross.line()


def test_loha_keeps_the_square(cross):
    """"a blue square on a white background" (no trigger) stays a square: measured 8 / 6 / 8 of 8."""
    assert cross.kept[0.0] == 8 and cross.kept[1.0] >= 6, cross.line()
