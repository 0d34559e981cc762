"""Aesthetic Gradients on a tiny SD 1.5 and a tiny CLIP built offline: the embedding's file
formats and value, personalisation toward it, exact restore, weight 0 = untouched, the grid axis."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.generate.aesthetic import (
    SAFETENSORS_KEY,
    AestheticError,
    AestheticSettings,
    create_aesthetic_embedding,
    read_embedding,
)
from engine.generate.aesthetic_apply import AestheticPersonalizer, load_text_projection, slerp
from engine.generate.grid import GridJob, run_grid
from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
from engine.models.loader import load_sd_components
from engine.models.text import tokenize
from tests.conftest import draw_shape_images

PROMPT = "a star on a white background"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from engine.models.toy import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=5)


@pytest.fixture(scope="module")
def embedding_files(tmp_path_factory, tiny_clip):
    refs = draw_shape_images(tmp_path_factory.mktemp("refs") / "refs", 5, colour=(30, 160, 60))
    out = tmp_path_factory.mktemp("aesthetic")
    pt, st = create_aesthetic_embedding(refs, str(tiny_clip), out, "greenish")
    return refs, pt, st


@pytest.fixture()
def model(tiny_model_dir):
    return load_sd_components(str(tiny_model_dir))


def test_embedding_is_the_normalised_mean_of_clip_image_embeddings(embedding_files, tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    refs, pt, st = embedding_files
    # independent reference: the full CLIPModel's get_image_features, as the extension computes it
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    images = [Image.open(p).convert("RGB") for p in sorted(refs.glob("*.png"))]
    with torch.no_grad():
        feats = clip.get_image_features(**processor(images=images, return_tensors="pt"))
    feats = getattr(feats, "pooler_output", feats)
    expected = feats.mean(0, keepdim=True)
    expected = expected / expected.norm(dim=-1, keepdim=True)

    # the .pt is the extension's format: one bare tensor, readable without unpickling code
    bare = torch.load(pt, weights_only=True)
    assert isinstance(bare, torch.Tensor) and bare.shape == (1, 16) and bare.dtype == torch.float32
    torch.testing.assert_close(bare, expected, atol=1e-5, rtol=1e-5)
    from engine.export.safetensors_io import load_with_metadata

    state, meta = load_with_metadata(st)
    assert list(state) == [SAFETENSORS_KEY] and torch.equal(state[SAFETENSORS_KEY], bare)
    assert meta["clip_model"] == str(tiny_clip) and meta["num_images"] == "5"
    assert meta["name"] == "greenish"
    for path in (pt, st):
        emb, _ = read_embedding(path)
        torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused_with_a_message(tmp_path, tiny_clip):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AestheticError, match="no reference images"):
        create_aesthetic_embedding(tmp_path / "empty", str(tiny_clip), tmp_path, "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(AestheticError, match="cannot read reference image broken.png"):
        create_aesthetic_embedding(tmp_path / "bad", str(tiny_clip), tmp_path, "x")
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, tmp_path / "emb.pt")
    with pytest.raises(AestheticError, match="not an aesthetic embedding"):
        read_embedding(tmp_path / "emb.pt")


def test_personalisation_moves_toward_the_image_embedding_and_restores_exactly(
        model, embedding_files, tiny_clip):
    _, _, st = embedding_files
    embedding, _ = read_embedding(st)
    te = model.text_encoder
    before = {k: v.clone() for k, v in te.state_dict().items()}
    flags = {k: p.requires_grad for k, p in te.named_parameters()}
    settings = AestheticSettings(steps=8, lr=1e-3)
    pers = AestheticPersonalizer(te, model.tokenizer, load_text_projection(str(tiny_clip)), embedding,
                                 settings)
    base_sim = pers.similarity(PROMPT)
    seen: list[float] = []
    zn = pers.personalized_states(PROMPT, after_step=lambda i, sim: seen.append(sim))
    # the optimisation raised the similarity step by step (seen[i] = before step i)
    assert seen[0] == pytest.approx(base_sim, abs=1e-6)
    assert seen[-1] > seen[0] and all(b >= a - 1e-6 for a, b in zip(seen, seen[1:]))
    # every weight is back bit for bit, and so are the requires_grad flags
    after = te.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in te.named_parameters()} == flags
    assert pers.similarity(PROMPT) == base_sim

    # the blended output's own text features move toward the image embedding with the weight
    ids = tokenize(model.tokenizer, [PROMPT])
    eos = int((ids[0] == model.tokenizer.eos_token_id).nonzero()[0])
    proj = pers.projection

    def sim_of(states):
        feats = proj(states[:, eos].float())
        return float((feats / feats.norm(dim=-1, keepdim=True)) @ embedding.T)

    sims = [sim_of(pers.encode([PROMPT], w)) for w in (0.0, 0.5, 1.0)]
    assert sims[0] == pytest.approx(base_sim, abs=1e-5)
    assert sims[0] < sims[1] < sims[2]
    torch.testing.assert_close(pers.encode([PROMPT], 1.0), zn)
    # a spherical blend lies between too, and keeps the token vectors' length
    z = pers.encode([PROMPT], 0.0)
    pers.settings = AestheticSettings(steps=8, lr=1e-3, slerp=True)
    half = pers.encode([PROMPT], 0.5)
    assert sims[0] < sim_of(half) < sims[2]
    torch.testing.assert_close(half.norm(dim=-1), z.norm(dim=-1), rtol=0.05, atol=0.0)


def test_text_rotation_and_slerp_helper():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid, torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel vectors: linear fallback


def test_weight_zero_is_bit_identical_and_weight_one_changes_the_image(model, embedding_files, tiny_clip):
    from engine.generate.aesthetic_apply import AestheticSwapper

    _, pt, _ = embedding_files
    pipe = build_pipeline(model)
    spec = [SampleSpec(PROMPT, "", 7, steps=4, cfg_scale=5.0, width=64, height=64)]
    plain = generate_batch(pipe, spec)[0]
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    # the bare .pt carries no CLIP name: the settings say which CLIP made it
    swapper = AestheticSwapper(model, AestheticSettings(steps=5, lr=1e-3, clip=str(tiny_clip)))
    swapper.load(pt)
    swapper.set_weight(0.0)
    zero = generate_batch(pipe, spec, encode=swapper.encode)[0]
    assert zero.tobytes() == plain.tobytes()
    swapper.set_weight(1.0)
    one = generate_batch(pipe, spec, encode=swapper.encode)[0]
    assert one.tobytes() != plain.tobytes()
    after = model.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and generating without the swapper afterwards gives the plain image again
    assert generate_batch(pipe, spec)[0].tobytes() == plain.tobytes()


def test_grid_has_an_aesthetic_weight_axis(model, embedding_files, tmp_path):
    _, _, st = embedding_files
    job = GridJob(checkpoints=[st], prompts=[PROMPT], weights=[0.0, 0.5, 1.0], steps=3,
                  width=64, height=64, aesthetic=AestheticSettings(steps=3, lr=1e-3))
    result = run_grid(model, job, tmp_path)
    assert result.col_labels == ["aesthetic weight 0", "aesthetic weight 0.5", "aesthetic weight 1"]
    cells = [Image.open(result.cells[(0, c, 0)]) for c in range(3)]
    assert cells[0].tobytes() != cells[2].tobytes()
    text = cells[1].text["parameters"]
    assert "Aesthetic embedding: greenish, Aesthetic weight: 0.5, Aesthetic steps: 3" in text
    assert Image.open(result.grids[0]).size[0] > 3 * 64


def test_sdxl_and_mismatched_clip_are_refused(tmp_path, model, embedding_files):
    from engine.generate.aesthetic_apply import AestheticSwapper
    from engine.models.toy import build_tiny_sdxl

    xl = load_sd_components(str(build_tiny_sdxl(tmp_path / "xl")))
    with pytest.raises(AestheticError, match="SD 1.x / 2.x"):
        AestheticSwapper(xl)
    embedding, _ = read_embedding(embedding_files[2])
    te, tok = model.text_encoder, model.tokenizer  # width 32
    with pytest.raises(AestheticError, match="text width is 48"):
        AestheticPersonalizer(te, tok, torch.nn.Linear(48, 16, bias=False), embedding, AestheticSettings())
    with pytest.raises(AestheticError, match="made with another CLIP"):
        AestheticPersonalizer(te, tok, torch.nn.Linear(32, 8, bias=False), embedding, AestheticSettings())


def test_cli_makes_an_embedding_and_a_grid(tmp_path, tiny_model_dir, tiny_clip, capsys):
    from launcher import main

    refs = draw_shape_images(tmp_path / "refs", 2, colour=(200, 40, 40))
    assert main(["aesthetic", str(refs), "--name", "reddish", "--clip", str(tiny_clip),
                 "--out", str(tmp_path / "emb"), "--offline"]) == 0
    assert (tmp_path / "emb" / "reddish.pt").is_file()
    grid_args = ["grid", "--base", str(tiny_model_dir), "--checkpoints", str(tmp_path / "emb" / "reddish.pt"),
                 "--prompt", PROMPT, "--weights", "0, 1", "--steps", "2", "--size", "64",
                 "--aesthetic-steps", "2", "--aesthetic-clip", str(tiny_clip), "--offline",
                 "--out", str(tmp_path / "grid")]
    assert main(grid_args) == 0
    assert len(list((tmp_path / "grid" / "cells").glob("*.png"))) == 2
    capsys.readouterr()
    assert main(grid_args[:-2] + ["--aesthetic-lr", "-1", "--out", str(tmp_path / "g2")]) == 2
    assert "lr" in capsys.readouterr().err and not (tmp_path / "g2").exists()
    assert main(["aesthetic", str(tmp_path / "nowhere"), "--name", "x", "--clip", str(tiny_clip)]) == 2
    assert "reference image folder not found" in capsys.readouterr().err


def test_compare_step_takes_aesthetic_embeddings(server, tmp_path, tiny_model_dir, tiny_clip, embedding_files):
    from gradio_client import Client

    from tests.test_webapp import grid_args

    _, pt, st = embedding_files
    client = Client(server, verbose=False)
    grid, cells, message = client.predict(
        *grid_args(tiny_model_dir, [st, pt], tmp_path, weights="0, 0.5", prompt=PROMPT, steps=2,
                   lr=1e-3, clip=str(tiny_clip)), api_name="/make_grid")
    assert message.startswith("saved 1 grid(s) and 4 cells"), message
    texts = [Image.open(p).text["parameters"] for p in sorted(tmp_path.glob("*/cells/*.png"))]
    assert "Aesthetic weight: 0.5, Aesthetic steps: 2, Aesthetic LR: 0.001" in texts[1]
    # the .safetensors and the .pt hold the same embedding: same images, row for row
    rows = sorted(tmp_path.glob("*/cells/*.png"))
    assert Image.open(rows[1]).tobytes() == Image.open(rows[3]).tobytes()
    assert Image.open(rows[0]).tobytes() != Image.open(rows[1]).tobytes()
