"""DreamArtist (APT): a positive and a negative embedding trained together through CFG."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_job
from safetensors.torch import load_file

from engine.config.job import ConfigError, parse_config
from engine.models.loader import load_sd_components
from engine.models.text import encode_prompts
from engine.training.loop import train
from engine.training.losses import guided


def da_job(model_dir, data, out, **network):
    job = lora_job(model_dir, data, out, optimizer={"lr": 0.05}, training={"epochs": 2})
    job["network"] = {"type": "dreamartist", "token": "zkzstar", "init_text": "star",
                      "num_vectors": 2, "negative_init_text": "blurry", "cfg_scale": 3.0,
                      "template": "subject_filewords", **network}
    return job


@pytest.fixture(scope="module")
def trained_da(tmp_path_factory, tiny_model_dir, tiny_dataset):
    out = tmp_path_factory.mktemp("da")
    model = load_sd_components(str(tiny_model_dir), local_files_only=True)
    result = train(parse_config(da_job(tiny_model_dir, tiny_dataset, out)), model=model)
    return result, model, out


def test_two_a1111_embeddings_per_save(trained_da):
    result, _, out = trained_da
    names = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".pt", ".png"))
    for stem in ("tiny", "tiny-neg", "tiny-000001", "tiny-neg-000001"):
        for suffix in (".safetensors", ".pt", ".png"):
            assert stem + suffix in names
    pos, neg = load_file(str(out / "tiny.safetensors")), load_file(str(out / "tiny-neg.safetensors"))
    assert pos["emb_params"].shape == (2, 32) and neg["emb_params"].shape == (1, 32)
    pt = torch.load(out / "tiny-neg.pt", weights_only=True)
    assert pt["name"] == "tiny-neg" and torch.equal(pt["string_to_param"]["*"], neg["emb_params"])


def test_only_the_new_rows_change(trained_da, tiny_model_dir):
    _, model, out = trained_da
    base = load_sd_components(str(tiny_model_dir), local_files_only=True)
    old = base.text_encoder.get_input_embeddings().weight
    new = model.text_encoder.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 3 and torch.equal(new[:old.shape[0]], old)
    vecs = torch.cat([load_file(str(out / "tiny.safetensors"))["emb_params"],
                      load_file(str(out / "tiny-neg.safetensors"))["emb_params"]])
    assert torch.equal(new[old.shape[0]:], vecs)
    for (name, a), b in zip(base.unet.state_dict().items(), model.unet.state_dict().values()):
        assert torch.equal(a, b), name


def test_diffusers_loads_both_and_encodes_like_our_model(trained_da, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    _, model, out = trained_da
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_textual_inversion(str(out / "tiny.pt"), token="myposemb")
    pipe.load_textual_inversion(str(out / "tiny-neg.safetensors"), token="mynegemb")
    prompts = [pipe.maybe_convert_prompt("a photo of myposemb", pipe.tokenizer), "mynegemb"]
    mine = ["a photo of zkzstar zkzstar_1", "zkzstar-neg"]
    with torch.no_grad():
        torch.testing.assert_close(encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts),
                                   encode_prompts(model.tokenizer, model.text_encoder, mine))


def test_guided_loss_goes_down(trained_da, tiny_model_dir, tiny_dataset):
    from conftest import dataset_latents

    _, model, _ = trained_da
    base = load_sd_components(str(tiny_model_dir), local_files_only=True)
    latents = dataset_latents(base, tiny_dataset)

    def loss(m, pos: str, neg: str) -> float:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            ctx = encode_prompts(m.tokenizer, m.text_encoder, [pos, neg])
            total = 0.0
            for step in (100, 300, 500, 700, 900):
                noise = torch.randn(latents.shape, generator=g)
                ts = torch.full((4,), step)
                noisy = m.noise_scheduler.add_noise(latents, noise, ts)
                cond = m.unet(noisy, ts, ctx[:1].expand(4, -1, -1)).sample
                uncond = m.unet(noisy, ts, ctx[1:].expand(4, -1, -1)).sample
                total += torch.nn.functional.mse_loss(guided(cond, uncond, 3.0), noise).item()
        return total / 5

    before = loss(base, "a photo of star star, zkz star, purple", "blurry")  # = the init vectors
    after = loss(model, "a photo of zkzstar zkzstar_1, zkz star, purple", "zkzstar-neg")
    print(f"DreamArtist guided loss {before:.4f} -> {after:.4f}")
    assert after < 0.98 * before, (before, after)  # measured 1.185 -> 1.147


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="network.cfg_scale"):
        parse_config(da_job(tmp_path, tmp_path, tmp_path, cfg_scale=0.5))
    cfg = parse_config(da_job(tmp_path, tmp_path, tmp_path))
    assert cfg.network.negative_num_vectors == 1 and cfg.network.type == "dreamartist"
