"""The shipped hypernetwork demo (presets/jobs/demo_hypernetwork.toml) teaches the embedded model
the demo's purple star for three training seeds and keeps prompts without the trigger; counted as
in test_demo_learning (engine.demo.learning: 8 sampling seeds, 20 Euler a steps, CFG 5)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.demo.learning import PURPLE_STAR, TRAINING_SEEDS, train_and_score


@pytest.fixture(scope="module", params=TRAINING_SEEDS, ids=[f"seed{s}" for s in TRAINING_SEEDS])
def hyper(request, tmp_path_factory):
    score, result = train_and_score("demo_hypernetwork", request.param, tmp_path_factory.mktemp("hyper"),
                                    PURPLE_STAR)
    return score, result


def test_the_hypernetwork_demo_draws_the_concept(hyper):
    """Measured for seeds 42 / 7 / 123: 8 / 8 / 6 of 8 purple stars at weight 1, none at 0 (8
    epochs at a constant rate: 3 / 3 / 0-6, drifting from epoch to epoch)."""
    score, result = hyper
    assert Path(result.final_path).suffix == ".pt"  # A1111's hypernetwork file
    assert score.hits[1.0] >= 5 and score.hits[0.0] == 0, score.line()


def test_the_hypernetwork_demo_keeps_prompts_without_the_trigger(hyper):
    """The MLPs act on every prompt; prior preservation keeps the square: measured 8 / 8 / 8."""
    score, _ = hyper
    assert score.kept[0.0] == 8 and score.kept[1.0] >= 6, score.line()
