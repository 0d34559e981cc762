"""Full fine-tune path (what the embedded model is pretrained with): saves a single-file checkpoint
that diffusers' from_single_file reloads, plus a diffusers folder, both equal to what was trained."""
from __future__ import annotations

import torch
from conftest import lora_job
from safetensors import safe_open

from engine.config.job import parse_config
from engine.models.loader import load_sd_components
from engine.training.loop import train


def test_full_finetune_saves_reloadable_checkpoint(tmp_path, tiny_model_dir, tiny_dataset):
    from conftest import denoising_loss
    from diffusers import StableDiffusionPipeline

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 2, "batch_size": 6})
    job["network"] = {"type": "dreambooth", "train_text_encoder": True}
    result = train(parse_config(job))
    assert [p.name for p in result.saved] == ["tiny-000001.safetensors", "tiny.safetensors"]
    with safe_open(str(result.final_path), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v1"
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())

    base = load_sd_components(str(tiny_model_dir))
    folder = load_sd_components(str(tmp_path / "tiny"))
    single = StableDiffusionPipeline.from_single_file(
        str(result.final_path), config=str(tiny_model_dir), local_files_only=True, safety_checker=None)
    for name in ("unet", "text_encoder"):
        trained = getattr(folder, name).state_dict()
        reloaded = getattr(single, name).state_dict()
        original = getattr(base, name).state_dict()
        assert trained.keys() == reloaded.keys()
        assert all(torch.equal(trained[k], reloaded[k]) for k in trained), name
        assert any(not torch.equal(trained[k], original[k]) for k in trained), f"{name} did not train"
    vae_same = all(torch.equal(a, b) for a, b in zip(base.vae.state_dict().values(),
                                                     folder.vae.state_dict().values()))
    assert vae_same, "the VAE must stay frozen"

    # and it learned: the fixed-noise denoising loss on the training images went down
    before, after = denoising_loss(base, tiny_dataset), denoising_loss(folder, tiny_dataset)
    print(f"full fine-tune fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before, (before, after)


def test_sd2_full_finetune_is_saved_as_a_single_file(tmp_path, tiny_dataset):
    """SD 2.x checkpoints keep their OpenCLIP encoder under cond_stage_model.model.; before, the
    run trained and then failed to save."""
    from diffusers import StableDiffusionPipeline

    from engine.models.toy import build_tiny_sd2

    sd2 = build_tiny_sd2(tmp_path / "sd2")
    job = lora_job(sd2, tiny_dataset, tmp_path / "out", training={"epochs": 1, "batch_size": 6})
    job["network"] = {"type": "dreambooth", "train_text_encoder": True}
    result = train(parse_config(job))
    with safe_open(str(result.final_path), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v2-768-v"
        assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in f.keys())
    single = StableDiffusionPipeline.from_single_file(str(result.final_path), config=str(sd2), local_files_only=True)
    folder = load_sd_components(str(tmp_path / "out" / "tiny"))
    for name in ("unet", "text_encoder"):
        trained, reloaded = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert all(torch.equal(trained[k], reloaded[k]) for k in trained), name
