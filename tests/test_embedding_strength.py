"""The grid's and Compare tab's strength axis for Textual Inversion embeddings: A1111-style
emphasis that never divides by a mean near zero, checked on the embedded model end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.generate.embedding_apply import emphasize


def test_a_near_zero_mean_is_not_divided_by():
    torch.manual_seed(0)
    hidden = torch.nn.functional.layer_norm(torch.randn(77, 64), (64,))  # mean ~1e-9, as LayerNorm gives
    weights = torch.ones(77)
    weights[1:3] = 0.75
    out = emphasize(hidden, weights)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, hidden * weights[:, None])  # only the rows are scaled


def test_a1111s_mean_restore_where_it_is_a_small_correction():
    torch.manual_seed(0)
    hidden = torch.randn(77, 64) * 0.5 - 0.3  # a mean well away from zero, as SD's CLIP output has
    weights = torch.ones(77)
    weights[1:3] = 1.3
    scaled = hidden * weights[:, None]
    assert torch.allclose(emphasize(hidden, weights), scaled * (hidden.mean() / scaled.mean()))
    assert torch.allclose(emphasize(hidden, weights).mean(), hidden.mean(), atol=1e-6)


@pytest.mark.parametrize("strength", [0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
def test_every_strength_gives_finite_bounded_values(strength):
    """An output whose mean becomes exactly zero at strength 0.75 (A1111's ratio is inf there)."""
    hidden = torch.full((77, 64), 0.01)
    hidden[5] = -76 * 0.01 / 0.75  # the embedding's row: at 0.75 the rows cancel
    weights = torch.ones(77)
    weights[5] = strength
    out = emphasize(hidden, weights)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 2 * (hidden * weights[:, None]).abs().max()


def test_the_strength_axis_on_the_embedded_model(tmp_path):
    """A grid of strengths 0..1 of an embedding (the vector of the word "red"): every cell is a
    drawing like the others (no noise), and the images move steadily toward strength 1."""
    from safetensors.torch import save_file

    from engine.generate.grid import GridJob, run_grid
    from engine.models.loader import load_sd_components

    model = load_sd_components("embedded")
    ids = model.tokenizer("red", add_special_tokens=False).input_ids
    save_file({"emb_params": model.text_encoder.get_input_embeddings().weight[ids].detach().clone()},
              str(tmp_path / "zkzemb.safetensors"))
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    result = run_grid(model, GridJob([tmp_path / "zkzemb.safetensors"], ["zkzemb, a circle on a white background"],
                                     weights=weights, seeds=[1], steps=12, cfg_scale=5.0, width=64, height=64),
                      tmp_path / "grid")
    images = [np.asarray(Image.open(result.cells[(0, c, 0)]).convert("RGB")).astype(float)
              for c in range(len(weights))]
    spread = [im.std() for im in images]
    assert max(spread) < 1.3 * min(spread), spread  # noise has a far larger spread than a drawing
    distance = [np.abs(im - images[-1]).mean() for im in images]
    assert all(a >= b for a, b in zip(distance, distance[1:])), distance
