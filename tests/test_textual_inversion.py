"""Textual Inversion on the tiny model: only the new rows change, A1111's lr schedule syntax,
the three file formats, and diffusers' load_textual_inversion reproduces what we trained."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_job
from PIL import Image
from safetensors.torch import load_file

from engine.config.job import ConfigError, parse_config
from engine.config.lr_schedule import LrScheduleError, lr_at, parse_lr_schedule
from engine.demo.learning import TRAINING_SEEDS
from engine.models.text import encode_prompts
from engine.networks.textual_inversion import embedding_from_b64
from engine.training.callbacks import Callbacks
from engine.training.loop import train


def test_lr_schedule_syntax():
    s = parse_lr_schedule("0.005:100, 1e-3:1000, 1e-5")
    assert s == [(0.005, 100), (1e-3, 1000), (1e-5, None)]
    assert [lr_at(s, k) for k in (0, 99, 100, 999, 1000, 10**6)] == [0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]
    for bad in ("", "abc", "0.1, 0.2:10", "0.1:10, 0.2:5", "-1:10"):
        with pytest.raises(LrScheduleError):
            parse_lr_schedule(bad)


def ti_job(model_dir, data, out, **network):
    job = lora_job(model_dir, data, out, optimizer={"lr": 0.05}, training={"epochs": 3})
    job["network"] = {"type": "textual_inversion", "token": "zkzstar", "init_text": "star",
                      "num_vectors": 2, "template": "subject_filewords", **network}
    return job


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="network.lr_schedule: only the last item"):
        parse_config(ti_job(tmp_path, tmp_path, tmp_path, lr_schedule="0.1, 0.01:5"))
    with pytest.raises(ConfigError, match="network.token"):
        parse_config(ti_job(tmp_path, tmp_path, tmp_path, token="two words"))


@pytest.fixture(scope="module")
def trained_ti(tmp_path_factory, tiny_model_dir, tiny_dataset):
    out = tmp_path_factory.mktemp("ti")
    lrs = []

    class Lr(Callbacks):
        def on_step(self, info):
            lrs.append(info.lr)

    cfg = parse_config(ti_job(tiny_model_dir, tiny_dataset, out, lr_schedule="0.05:9, 0.02"))
    from engine.models.loader import load_sd_components

    model = load_sd_components(str(tiny_model_dir), local_files_only=True)
    result = train(cfg, Lr(), model=model)
    return cfg, result, model, lrs


def test_only_the_new_rows_change(trained_ti, tiny_model_dir):
    from engine.models.loader import load_sd_components

    _, result, model, lrs = trained_ti
    base = load_sd_components(str(tiny_model_dir), local_files_only=True)
    ids = model.tokenizer.convert_tokens_to_ids(["zkzstar", "zkzstar_1"])
    new = model.text_encoder.get_input_embeddings().weight.detach()
    old = base.text_encoder.get_input_embeddings().weight.detach()
    assert new.shape[0] == old.shape[0] + 2 and ids == [old.shape[0], old.shape[0] + 1]
    assert torch.equal(new[: old.shape[0]], old)  # every existing row bit-identical
    star = base.tokenizer("star", add_special_tokens=False).input_ids[0]
    assert not torch.allclose(new[ids[0]], old[star])  # ours moved from the init word
    te_same = [torch.equal(a, b) for (k, a), (_, b) in zip(model.text_encoder.state_dict().items(),
                                                          base.text_encoder.state_dict().items())
               if "token_embedding" not in k]
    assert all(te_same) and all(torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(),
                                                                 base.unet.state_dict().values()))
    assert result.steps == 18
    assert lrs == [lr_at([(0.05, 9), (0.02, None)], k) for k in range(1, 19)]


def test_files_in_a1111_formats(trained_ti):
    _, result, model, _ = trained_ti
    ids = model.tokenizer.convert_tokens_to_ids(["zkzstar", "zkzstar_1"])
    vec = model.text_encoder.get_input_embeddings().weight.detach()[ids]
    st = load_file(str(result.final_path))
    assert list(st) == ["emb_params"] and torch.equal(st["emb_params"], vec)
    pt = torch.load(result.final_path.with_suffix(".pt"), weights_only=True)
    assert pt["string_to_token"] == {"*": 265} and pt["name"] == "tiny" and pt["step"] == 18
    assert torch.equal(pt["string_to_param"]["*"], vec)
    chunk = Image.open(result.final_path.with_suffix(".png")).text["sd-ti-embedding"]
    assert torch.allclose(embedding_from_b64(chunk)["string_to_param"]["*"], vec)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_diffusers_loads_the_embedding_and_encodes_like_our_model(trained_ti, tiny_model_dir, suffix):
    from diffusers import StableDiffusionPipeline

    _, result, model, _ = trained_ti
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_textual_inversion(str(result.final_path.with_suffix(suffix)), token="myemb")
    theirs = pipe.maybe_convert_prompt("a photo of myemb", pipe.tokenizer)
    assert theirs == "a photo of myemb myemb_1"
    with torch.no_grad():
        a = encode_prompts(pipe.tokenizer, pipe.text_encoder, [theirs])
        b = encode_prompts(model.tokenizer, model.text_encoder, ["a photo of zkzstar zkzstar_1"])
    torch.testing.assert_close(a, b)


def test_training_lowers_the_denoising_loss(trained_ti, tiny_dataset):
    """Fixed noise and timesteps: the trained vectors explain the images better than the init
    (deterministic: no learning would give equal losses; measured 1.184 -> 1.174 on the random tiny model)."""
    from conftest import dataset_latents

    _, _, model, _ = trained_ti
    lat = dataset_latents(model, tiny_dataset)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(50, 950, (4,), generator=g)
        noisy = model.noise_scheduler.add_noise(lat, noise, t)
        emb = model.text_encoder.get_input_embeddings().weight
        ids = model.tokenizer.convert_tokens_to_ids(["zkzstar", "zkzstar_1"])
        trained = emb[ids].clone()

        def loss():
            h = encode_prompts(model.tokenizer, model.text_encoder,
                               ["a photo of a zkzstar zkzstar_1, zkz star, purple"] * 4)
            return torch.nn.functional.mse_loss(model.unet(noisy, t, h).sample, noise).item()
        after = loss()
        star = model.tokenizer("star", add_special_tokens=False).input_ids[0]
        emb[ids] = emb[star].clone()
        before = loss()
        emb[ids] = trained
    assert after < before, (before, after)


def test_sample_prompts_use_every_vector(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    """A sample prompt says 'zkzstar' once; generation must see all vectors, the PNG the typed text."""
    import engine.training.samples as ts

    seen = []
    real = ts.build_pipeline

    def spy(*args, **kwargs):  # record the prompt text the pipeline actually tokenizes
        pipe = real(*args, **kwargs)
        convert = pipe.maybe_convert_prompt

        def recording(prompt, tokenizer):
            out = convert(prompt, tokenizer)
            seen.append(out)
            return out
        pipe.maybe_convert_prompt = recording
        return pipe

    monkeypatch.setattr(ts, "build_pipeline", spy)
    job = ti_job(tiny_model_dir, tiny_dataset, tmp_path)
    job["training"]["epochs"] = 1
    job["sample"] = {"prompts": ["a photo of zkzstar --s 2"], "every_n_epochs": 1}
    result = train(parse_config(job))
    assert seen[0] in ("a photo of zkzstar zkzstar_1", ["a photo of zkzstar zkzstar_1"])
    png = sorted((tmp_path / "sample").glob("*.png"))
    assert len(png) == 1 and Image.open(png[0]).text["parameters"].startswith("a photo of zkzstar\n")
    assert result.steps == 6


def test_grid_strength_axis_is_a1111_emphasis(trained_ti, tiny_model_dir, tmp_path):
    """Rows = epochs of one embedding, columns = (name:strength); strength 1 equals plain use."""
    import numpy as np

    from engine.generate.grid import GridJob, run_grid
    from engine.generate.sampler import SampleSpec, build_pipeline, generate
    from engine.generate.swappers import NetworkSwapper
    from engine.models.loader import load_sd_components

    _, result, trained, _ = trained_ti
    model = load_sd_components(str(tiny_model_dir), local_files_only=True)
    job = GridJob(checkpoints=result.saved, prompts=["a photo of tiny"], weights=[0.5, 1.0],
                  seeds=[3], steps=3, cfg_scale=5.0, width=64, height=64)
    grid = run_grid(model, job, tmp_path)
    assert grid.row_labels == ["epoch 1", "epoch 2", "epoch 3"]
    assert grid.col_labels == ["strength 0.5", "strength 1"]
    assert "(tiny:0.5)" in Image.open(grid.cells[(2, 0, 0)]).text["parameters"]
    px = {k: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for k, p in grid.cells.items()}
    assert np.abs(px[(2, 0, 0)] - px[(2, 1, 0)]).max() > 0
    # strength 1 of the last epoch = the trained model prompted with its own token
    pipe = build_pipeline(trained)
    own = generate(pipe, SampleSpec("a photo of zkzstar", seed=3, steps=3, cfg_scale=5.0,
                                    width=64, height=64))[0]
    assert np.array_equal(px[(2, 1, 0)], np.asarray(own.convert("RGB"), dtype=np.int16))

    # strength 0.5 follows A1111's rule: scale the embedding's token rows, keep the mean
    own_model = load_sd_components(str(tiny_model_dir), local_files_only=True)
    swapper = NetworkSwapper(own_model)
    swapper.load(result.final_path)
    swapper.set_weight(0.5)
    got = swapper.encode(["a photo of tiny"])[0]
    swapper.set_weight(1.0)
    plain = swapper.encode(["a photo of tiny"])[0]
    ids = own_model.tokenizer("a photo of <tiny> <tiny>_1", padding="max_length", max_length=77,
                              return_tensors="pt").input_ids[0]
    rows = ids >= 49408  # the two added tokens, after CLIP's 49408 words
    assert rows.sum() == 2
    want = plain.clone()
    want[rows] *= 0.5
    # A1111 then restores the mean; only where the mean is well away from zero (on this tiny
    # random text encoder it is ~0 after the final LayerNorm: the rows are only scaled then)
    floor = 0.01 * plain.abs().mean()
    if min(plain.mean().abs(), want.mean().abs()) >= floor and plain.mean() * want.mean() > 0:
        want *= (plain.mean() / want.mean()).clamp(0.5, 2.0)
    torch.testing.assert_close(got, want)


@pytest.fixture(scope="module", params=TRAINING_SEEDS)
def demo_ti(request, tmp_path_factory):
    """The shipped demo TI job with three training seeds: the learned vectors' norms and, for 8
    sampling seeds of the prompt "zkzstar", whether each image is a purple star."""
    from engine.config.job import parse_config
    from engine.demo.learning import PURPLE_STAR, demo_job
    from engine.demo.measure import foreground_mask
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
    from engine.generate.swappers import NetworkSwapper
    from engine.models.loader import load_sd_components
    from engine.training.loop import train

    result = train(parse_config(demo_job("demo_ti", request.param, tmp_path_factory.mktemp("demo-ti"))))
    model = load_sd_components("embedded", local_files_only=True)
    word = float(model.text_encoder.get_input_embeddings().weight.detach().norm(dim=1).mean())
    specs = [SampleSpec("zkzstar", seed=s, steps=20, cfg_scale=5.0, width=64, height=64) for s in range(8)]
    pipe = build_pipeline(model)
    before = generate_batch(pipe, specs)  # no embedding: "zkzstar" is just letters to the base
    swapper = NetworkSwapper(model)
    swapper.load(result.final_path)
    swapper.set_weight(1.0)
    after = generate_batch(pipe, specs, encode=swapper.encode)
    vectors = load_file(str(result.final_path))["emb_params"]
    star = PURPLE_STAR.hit  # a purple, pointy shape: what the other demos' learning tests count
    return {"norms": vectors.norm(dim=1).tolist(), "word": word, "before": [star(im) for im in before],
            "after": [star(im) for im in after], "drawn": [round(float(foreground_mask(im).mean()), 3) > 0.03 for im in after],
            "foreground": [round(float(foreground_mask(im).mean()), 3) for im in after]}


def test_demo_ti_learns_a_purple_star_for_most_seeds(demo_ti):
    """Measured 8, 6 and 6 purple stars of 8 for training seeds 42, 7 and 123, one faint image in
    24 (the earlier recipe: 4 of 8 with seed 42, the rest faint green); none without the embedding."""
    assert sum(demo_ti["after"]) >= 5 and not any(demo_ti["before"]), demo_ti
    assert sum(demo_ti["drawn"]) >= 7, demo_ti  # measured: 1 faint image in 24, none blank


def test_demo_ti_vectors_stay_near_a_words_length(demo_ti):
    assert max(demo_ti["norms"]) <= 2.0 * demo_ti["word"] * 1.001, demo_ti
