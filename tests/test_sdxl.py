"""SDXL LoRA / LyCORIS on a tiny SDXL-architecture model: two text encoders (lora_te1/lora_te2
keys), pooled + size conditioning, diffusers' SDXL loader agrees with the trained model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dataset_latents, lora_job
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_lycoris import a1111_names, file_modules, merge_like_a1111

from engine.config.job import parse_config
from engine.models.loader import load_sd_components
from engine.training.loop import train
from engine.training.setup import SetupError


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from engine.models.toy import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_dir, tiny_dataset, tmp_path_factory):
    cfg = parse_config(lora_job(sdxl_dir, tiny_dataset, tmp_path_factory.mktemp("xl-lora"),
                                optimizer={"lr": 3e-3},
                                sample={"prompts": ["zkz star --s 2"], "every_n_epochs": 3}))
    model = load_sd_components(str(sdxl_dir))
    return cfg, train(cfg, model=model), model


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    pooled = torch.randn(2, 48, generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [80, 64, 0, 8, 64, 64]])
    return x, torch.tensor([10, 700]), ctx, {"text_embeds": pooled, "time_ids": time_ids}


def test_keys_metadata_and_samples(sdxl_lora, sdxl_dir):
    _, result, _ = sdxl_lora
    modules = {k.split(".")[0] for k in load_file(str(result.final_path))}
    base = load_sd_components(str(sdxl_dir))
    assert modules <= set(a1111_names(base))
    for prefix in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                   "lora_te2_text_model_encoder_layers_1_mlp_fc2",
                   "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"):  # SGM names (1 layer per block)
        assert prefix in modules
    assert not any(m.startswith("lora_te_") for m in modules)
    with safe_open(str(result.final_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    samples = sorted((result.final_path.parent / "sample").glob("*.png"))
    assert len(samples) == 1 and Image.open(samples[0]).size == (64, 64)


def test_diffusers_sdxl_loader_matches_the_trained_model(sdxl_lora, sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    _, result, trained = sdxl_lora
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    x, t, ctx, added = unet_inputs(pipe.unet)
    ids = pipe.tokenizer(["zkz star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base = pipe.unet(x, t, ctx, added_cond_kwargs=added).sample
    pipe.load_lora_weights(str(result.final_path), adapter_name="xl")
    with torch.no_grad():
        pipe.set_adapters(["xl"], adapter_weights=[0.0])
        assert torch.equal(pipe.unet(x, t, ctx, added_cond_kwargs=added).sample, base)
        pipe.set_adapters(["xl"], adapter_weights=[1.0])
        theirs = pipe.unet(x, t, ctx, added_cond_kwargs=added).sample
        mine = trained.unet(x, t, ctx, added_cond_kwargs=added).sample
        assert (mine - base).abs().max() > 1e-4
        torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-5)
        for a, b in ((pipe.text_encoder, trained.text_encoder), (pipe.text_encoder_2, trained.text_encoder_2)):
            torch.testing.assert_close(a(ids, output_hidden_states=True).hidden_states[-2],
                                       b(ids, output_hidden_states=True).hidden_states[-2],
                                       rtol=1e-4, atol=1e-5)


def fixed_loss_xl(model, dataset_dir, prompt: str) -> float:
    """Denoising loss at fixed noise/timesteps with SDXL conditioning (deterministic yardstick)."""
    from engine.data.dataset import TrainingSamples
    from engine.data.folder import scan_dataset
    from engine.models.text import encode_sdxl_prompts

    data = TrainingSamples(scan_dataset(dataset_dir), 64)
    latents = dataset_latents(model, dataset_dir)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        hidden, pooled = encode_sdxl_prompts([model.tokenizer, model.tokenizer_2],
                                             model.text_encoders, [prompt])
        added = {"text_embeds": pooled.expand(4, -1),
                 "time_ids": torch.stack([data.size_conditioning(i) for i in range(4)])}
        total = 0.0
        for step in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=g)
            ts = torch.full((4,), step)
            noisy = model.noise_scheduler.add_noise(latents, noise, ts)
            pred = model.unet(noisy, ts, hidden.expand(4, -1, -1), added_cond_kwargs=added).sample
            total += torch.nn.functional.mse_loss(pred, noise).item()
    return total / 5


def test_loss_goes_down(sdxl_lora, sdxl_dir, tiny_dataset):
    _, result, trained = sdxl_lora
    before = fixed_loss_xl(load_sd_components(str(sdxl_dir)), tiny_dataset, "zkz star, purple")
    after = fixed_loss_xl(trained, tiny_dataset, "zkz star, purple")
    assert after < 0.97 * before, (before, after)


def test_size_conditioning_numbers(tmp_path):
    """original (h, w), crop corner (top, left), target (h, w), as the resize/crop really does."""
    from engine.data.dataset import TrainingSamples
    from engine.data.folder import scan_dataset

    folder = tmp_path / "1_x"
    folder.mkdir()
    Image.new("RGB", (80, 64), "white").save(folder / "wide.png")
    Image.new("RGB", (64, 100), "white").save(folder / "tall.png")
    data = TrainingSamples(scan_dataset(tmp_path), 64)
    got = {it.path.name: data.size_conditioning(i).tolist() for i, it in enumerate(data._unique)}
    assert got == {"wide.png": [64, 80, 0, 8, 64, 64], "tall.png": [100, 64, 18, 0, 64, 64]}


def test_loha_on_sdxl_merges_like_a1111(sdxl_dir, tiny_dataset, tmp_path):
    job = lora_job(sdxl_dir, tiny_dataset, tmp_path, network={
        "type": "loha", "dim": 4, "alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0})
    job["training"]["max_steps"] = 6
    model = load_sd_components(str(sdxl_dir))
    result = train(parse_config(job), model=model)
    state = load_file(str(result.final_path))
    base = load_sd_components(str(sdxl_dir))
    modules = file_modules(state)
    assert any(k.startswith("lora_te1_text_model_") for k in modules)
    assert any(k.startswith("lora_te2_text_model_") for k in modules)
    merge_like_a1111(base, state)
    x, t, ctx, added = unet_inputs(base.unet)
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, t, ctx, added_cond_kwargs=added).sample,
                                   model.unet(x, t, ctx, added_cond_kwargs=added).sample,
                                   rtol=1e-4, atol=1e-5)
    fresh = load_sd_components(str(sdxl_dir))
    before = fixed_loss_xl(fresh, tiny_dataset, "zkz star, purple")
    after = fixed_loss_xl(model, tiny_dataset, "zkz star, purple")
    print(f"SDXL LoHa fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.99 * before, (before, after)


def test_grid_on_sdxl(sdxl_lora, sdxl_dir, tmp_path):
    from engine.generate.grid import GridJob, run_grid

    _, result, _ = sdxl_lora
    job = GridJob(checkpoints=result.saved[-2:], prompts=["zkz star"], weights=[0.0, 1.0], seeds=[5],
                  steps=3, width=64, height=64)
    grid = run_grid(load_sd_components(str(sdxl_dir)), job, tmp_path)
    px = {k: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for k, p in grid.cells.items()}
    assert np.array_equal(px[(0, 0, 0)], px[(1, 0, 0)])
    assert np.abs(px[(1, 0, 0)] - px[(1, 1, 0)]).max() > 0


def test_sdxl_files_with_diffusers_block_names_still_load(sdxl_lora, sdxl_dir, tmp_path):
    """Files written before SDXL modules took their SGM names (or by tools that use diffusers'
    names) act exactly like the same file with SGM names."""
    from safetensors.torch import save_file

    from engine.generate.swappers import NetworkSwapper
    from engine.models.single_file import unet_key_to_original

    _, result, _ = sdxl_lora
    model = load_sd_components(str(sdxl_dir))
    state = load_file(str(result.final_path))
    plain = {}
    for path, module in model.unet.named_modules():
        if hasattr(module, "weight") and path:
            sgm = unet_key_to_original(f"{path}.weight", model.unet.config).removesuffix(".weight")
            plain[f"lora_unet_{sgm}".replace(".", "_")] = f"lora_unet_{path}".replace(".", "_")
    renamed = {plain.get(k.split(".")[0], k.split(".")[0]) + "." + k.split(".", 1)[1]: v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    old = tmp_path / "old-names.safetensors"
    save_file(renamed, str(old))
    x, t, ctx, added = unet_inputs(model.unet)
    with torch.no_grad():
        base = model.unet(x, t, ctx, added_cond_kwargs=added).sample
    outputs = []
    for path in (result.final_path, old):
        swapper = NetworkSwapper(model)
        swapper.load(path)
        swapper.set_weight(1.0)
        with torch.no_grad():
            outputs.append(model.unet(x, t, ctx, added_cond_kwargs=added).sample)
        swapper.set_weight(0.0)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], base)


def test_textual_inversion_on_sdxl(sdxl_dir, tiny_dataset, tmp_path):
    """clip_l + clip_g vectors; every other row of both tables untouched; diffusers loads each
    half into its encoder and encodes prompts exactly like the trained model."""
    from diffusers import StableDiffusionXLPipeline

    from engine.models.text import encode_sdxl_prompts

    job = lora_job(sdxl_dir, tiny_dataset, tmp_path, optimizer={"lr": 0.05}, training={"epochs": 2})
    job["network"] = {"type": "textual_inversion", "token": "zkzstar", "init_text": "star",
                      "num_vectors": 2}
    model = load_sd_components(str(sdxl_dir))
    result = train(parse_config(job), model=model)
    state = load_file(str(result.final_path))
    assert set(state) == {"clip_l", "clip_g"}
    assert state["clip_l"].shape == (2, 32) and state["clip_g"].shape == (2, 48)
    base = load_sd_components(str(sdxl_dir))
    for before, after, vec in ((base.text_encoder, model.text_encoder, state["clip_l"]),
                               (base.text_encoder_2, model.text_encoder_2, state["clip_g"])):
        old, new = before.get_input_embeddings().weight, after.get_input_embeddings().weight
        assert torch.equal(new[:old.shape[0]], old) and torch.equal(new[old.shape[0]:], vec)
        assert not torch.equal(vec[0], old[base.tokenizer("star", add_special_tokens=False).input_ids[0]])
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.load_textual_inversion(state["clip_l"], token="myemb", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="myemb", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    with torch.no_grad():
        theirs = pipe.encode_prompt("a photo of myemb", do_classifier_free_guidance=False)
        ours = encode_sdxl_prompts([model.tokenizer, model.tokenizer_2], model.text_encoders,
                                   ["a photo of zkzstar zkzstar_1"])
    torch.testing.assert_close(theirs[0], ours[0])  # hidden states
    torch.testing.assert_close(theirs[2], ours[1])  # pooled
    assert not (tmp_path / "tiny.pt").exists()  # no SDXL .pt embedding format exists
    # the learned vectors denoise the dataset better than the init word's
    before = fixed_loss_xl(base, tiny_dataset, "a photo of star star")
    after = fixed_loss_xl(model, tiny_dataset, "a photo of zkzstar zkzstar_1")
    print(f"SDXL TI fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < before, (before, after)


def test_dreambooth_on_sdxl_single_file_round_trip(sdxl_dir, tiny_dataset, tmp_path):
    """Full fine-tune of the UNet and both encoders; the original-layout single file (SGM keys,
    OpenCLIP layout for the second encoder) reloads with from_single_file to the same weights,
    and our loader reads it back as SDXL."""
    from diffusers import StableDiffusionXLPipeline

    job = lora_job(sdxl_dir, tiny_dataset, tmp_path, optimizer={"lr": 5e-4})
    job["network"] = {"type": "dreambooth", "train_text_encoder": True}
    job["training"]["max_steps"] = 4
    job["output"]["save_precision"] = "fp32"
    model = load_sd_components(str(sdxl_dir))
    result = train(parse_config(job), model=model)
    with safe_open(str(result.final_path), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    base = load_sd_components(str(sdxl_dir))
    assert not torch.equal(base.unet.conv_in.weight, model.unet.conv_in.weight)
    pipe = StableDiffusionXLPipeline.from_single_file(str(result.final_path), config=str(sdxl_dir),
                                                      local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(model, name).state_dict(), getattr(pipe, name).state_dict()
        for key, value in mine.items():
            if not key.endswith("position_ids"):
                assert torch.equal(value, theirs[key]), (name, key)
    again = load_sd_components(str(result.final_path), single_file_config=sdxl_dir)
    assert again.family == "sdxl" and torch.equal(again.text_encoder_2.text_projection.weight,
                                         model.text_encoder_2.text_projection.weight)
    folder = result.final_path.with_suffix("")
    assert (folder / "text_encoder_2" / "model.safetensors").is_file()
    before = fixed_loss_xl(base, tiny_dataset, "zkz star, purple")
    after = fixed_loss_xl(model, tiny_dataset, "zkz star, purple")
    print(f"SDXL full fine-tune fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.97 * before, (before, after)


@pytest.mark.parametrize("network", [
    {"type": "dreamartist", "token": "zkzstar"},
    {"type": "hypernetwork"},
])
def test_methods_not_yet_on_sdxl_are_refused_clearly(sdxl_dir, tiny_dataset, tmp_path, network):
    job = lora_job(sdxl_dir, tiny_dataset, tmp_path)
    job["network"] = network
    with pytest.raises(SetupError, match="not available for SDXL yet"):
        train(parse_config(job))


def test_grid_says_sdxl_embeddings_are_not_supported_yet(sdxl_dir, tmp_path):
    from safetensors.torch import save_file

    from engine.generate.lora_apply import LoraFileError
    from engine.generate.swappers import NetworkSwapper

    path = tmp_path / "xlemb.safetensors"
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, str(path))
    with pytest.raises(LoraFileError, match="an SDXL embedding"):
        NetworkSwapper(load_sd_components(str(sdxl_dir))).load(path)


def test_text_encoder_cache_on_sdxl_trains_the_same(sdxl_dir, tiny_dataset, tmp_path):
    """Cached hidden states + pooled projection give the same losses as encoding every step."""
    runs = {}
    for cache in (False, True):
        job = lora_job(sdxl_dir, tiny_dataset, tmp_path / str(cache), network={"train_unet_only": True},
                       training={"epochs": 1, "cache_text_encoder_outputs": cache,
                                 "offload_after_caching": True})
        runs[cache] = train(parse_config(job)).losses
    assert len(runs[True]) == 6 and runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_low_resolution_gets_a_note(sdxl_dir, tiny_dataset, tmp_path):
    from engine.training.callbacks import Callbacks

    logs = []

    class Log(Callbacks):
        def on_log(self, message):
            logs.append(message)

    job = lora_job(sdxl_dir, tiny_dataset, tmp_path, training={"max_steps": 1})
    train(parse_config(job), Log())
    assert any("SDXL models were trained at 1024 px" in m for m in logs)
