"""Our LoRA / LyCORIS files on the real SD 1.5, SD 2.x and SDXL architectures, placed by
A1111's and ComfyUI's key rules (tests/lora_key_rules.py): every module must land on a layer
of the right size. The models are built with no memory behind them (names and shapes only),
the networks are built by the same code as training, and the file keys are the ones we save."""
from __future__ import annotations

import re

import pytest

from engine.methods.lora import LoraNetworkConfig
from engine.methods.lycoris import LycorisNetworkConfig
from engine.models.single_file import to_original_state_dict
from engine.networks import lora, lycoris_net
from tests.lora_key_rules import a1111_layers, a1111_problems, comfyui_key_map, comfyui_problems, module_deltas
from tests.test_real_checkpoints import meta_components

COMFY_ENCODERS = {"sd15": ["clip_l"], "sd2-512": ["clip_h"], "sdxl": ["clip_l", "clip_g"]}


def _file_state(arch: str, method: str):
    parts = meta_components(arch)
    tes = [parts[n] for n in ("text_encoder", "text_encoder_2") if n in parts]
    original = {k: v.shape for k, v in to_original_state_dict(
        parts["unet"], parts["vae"], parts["text_encoder"], parts.get("text_encoder_2")).items()}
    encoders = {name: {k: v.shape for k, v in te.state_dict().items()}
                for name, te in zip(COMFY_ENCODERS[arch], tes)}
    if method == "lora":
        cfg = LoraNetworkConfig(dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0)  # LoCon-style: convs too
        lora.inject_lora(parts["unet"], lora.unet_targets(parts["unet"], cfg))
        state = lora.kohya_state_dict(parts["unet"], lora.UNET_PREFIX)
        for prefix, te in zip(lora.te_prefixes(len(tes)), tes):
            lora.inject_lora(te, lora.text_encoder_targets(te, cfg))
            state |= lora.kohya_state_dict(te, prefix)
    else:
        net = lycoris_net.create_network(parts["unet"], tes, LycorisNetworkConfig(type=method, dim=4, alpha=2.0))
        state = lycoris_net.file_state_dict(net, tes, parts["unet"])
    return parts["unet"], original, encoders, state


CASES = [("sd15", "lora"), ("sd2-512", "lora"), ("sdxl", "lora"), ("sd15", "loha"), ("sd2-512", "loha"),
         ("sdxl", "loha"), ("sdxl", "lokr")]


@pytest.mark.parametrize("arch, method", CASES)
def test_every_module_lands_in_a1111_and_comfyui(arch, method):
    unet, original, encoders, state = _file_state(arch, method)
    deltas = module_deltas(state)
    assert len(deltas) > 250  # the real architecture: hundreds of modules, text encoders included
    assert any(m.startswith("lora_te") for m in deltas)
    assert any("conv" in m or "op" in m for m in deltas)  # the 3x3 convs (LoCon, LyCORIS full)
    assert a1111_problems(deltas, a1111_layers(original)) == []
    assert comfyui_problems(deltas, comfyui_key_map(original, unet.config, encoders)) == []
    if arch == "sdxl":  # kohya's names for SDXL: the original (SGM) block layout
        unet_modules = [m for m in deltas if m.startswith("lora_unet_")]
        assert unet_modules and all(m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_",
                                                  "lora_unet_output_blocks_", "lora_unet_time_embed_",
                                                  "lora_unet_out_")) for m in unet_modules), unet_modules[:3]
        assert any(m.startswith("lora_unet_output_blocks_2_2_conv") for m in unet_modules)  # 1st upsampler


def test_the_rules_catch_what_a1111_misses():
    """The old diffusers names of an SDXL file: A1111's SD 1.x block arithmetic sends the first
    upsampler to a layer that does not exist; ComfyUI, which builds its map from the UNet's
    layout, places it."""
    from tests.lora_key_rules import a1111_place, comfyui_unet_modules

    parts = meta_components("sdxl")
    original = {k: v.shape for k, v in to_original_state_dict(
        parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"]).items()}
    layers = a1111_layers(original)
    assert a1111_place("lora_unet_up_blocks_0_upsamplers_0_conv", layers) is None
    assert a1111_place("lora_unet_output_blocks_2_2_conv", layers).layer == "diffusion_model_output_blocks_2_2_conv"
    assert a1111_place("lora_unet_up_blocks_1_upsamplers_0_conv", layers) is not None
    assert comfyui_unet_modules(parts["unet"].config)["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    sd15 = meta_components("sd15")
    assert comfyui_unet_modules(sd15["unet"].config)["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.1.conv"
    assert a1111_place("lora_te2_text_model_encoder_layers_3_self_attn_q_proj", layers).part == "q_proj"
    assert a1111_problems({"lora_te2_text_model_encoder_layers_3_self_attn_q_proj": original[
        "conditioner.embedders.1.model.transformer.resblocks.3.attn.out_proj.weight"]}, layers) == [
        "1_model_transformer_resblocks_3_attn: only ['q_proj'] of q/k/v"]


# --- DreamBooth single files: the checkpoint layout A1111 and ComfyUI expect ---------------------------

@pytest.mark.parametrize("arch, a1111, comfyui, counts", [
    ("sd15", "v1", "SD15", {"model": 686, "first_stage_model": 248, "cond_stage_model": 197, "schedule": 12}),
    ("sd2-512", "sd2", "SD20", {"model": 686, "first_stage_model": 248, "cond_stage_model": 294, "schedule": 12}),
    ("sdxl", "sdxl", "SDXL", {"model": 1680, "first_stage_model": 248, "conditioner": 587, "schedule": 0})])
def test_checkpoint_files_have_the_original_layout(arch, a1111, comfyui, counts, tmp_path):
    """Every weight sits at the name diffusers' converter reads (the exact round trips of
    test_models / test_real_checkpoints); beside them the tensors real checkpoints carry and no
    loader needs: CLIP-L's int64 token positions, OpenCLIP's logit scale and projection, SD 2's
    unused 24th text layer, and SD 1.x / 2.x's noise schedule. A1111 and ComfyUI pick the right
    model from the keys."""
    from engine.models.reference import ARCHITECTURES
    from engine.models.single_file import LDM_SCHEDULE_KEYS, ldm_schedule_buffers
    from tests.lora_key_rules import a1111_checkpoint_config, comfyui_checkpoint_model

    parts = meta_components(arch)
    shapes = {k: v.shape for k, v in to_original_state_dict(
        parts["unet"], parts["vae"], parts["text_encoder"], parts.get("text_encoder_2")).items()}
    schedule = ARCHITECTURES[arch]["scheduler"][1]
    if arch != "sdxl":
        shapes |= {k: v.shape for k, v in ldm_schedule_buffers({**schedule, "beta_schedule": "scaled_linear"}).items()}
    got = {"schedule": sum(k in LDM_SCHEDULE_KEYS for k in shapes)}
    for key in shapes:
        if key not in LDM_SCHEDULE_KEYS:
            got[key.split(".")[0]] = got.get(key.split(".")[0], 0) + 1
    assert got == counts
    assert a1111_checkpoint_config(shapes) == a1111 and comfyui_checkpoint_model(shapes) == comfyui
    clip_l = {"sd15": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}.get(arch)
    if clip_l:
        assert shapes[clip_l + "text_model.embeddings.position_ids"] == (1, 77)
    open_clip = {"sd2-512": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}.get(arch)
    if open_clip:
        assert shapes[open_clip + "logit_scale"] == () and len(shapes[open_clip + "text_projection"]) == 2
        layers = {int(re.search(r"resblocks\.(\d+)\.", k)[1]) for k in shapes
                  if k.startswith(open_clip + "transformer.resblocks.")}
        assert layers == set(range(24 if arch == "sd2-512" else 32))


def test_a_saved_checkpoint_carries_the_extras_with_their_values(tmp_path):
    """The values of what a DreamBooth export adds: positions 0..76 as integers, the schedule of
    the model's own noise scheduler (alphas_cumprod as diffusers computes it)."""
    import math

    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors import safe_open

    from engine.models.single_file import save_single_file
    from engine.models.toy import build_tiny_sd15, build_tiny_sdxl

    pipe = StableDiffusionPipeline.from_pretrained(build_tiny_sd15(tmp_path / "sd15"))
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    path = save_single_file(pipe, tmp_path / "sd15.safetensors", half=True, noise_schedule=schedule.config)
    with safe_open(str(path), "pt") as fh:
        positions = fh.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids")
        assert positions.dtype == torch.int64 and positions.tolist() == [list(range(77))]
        torch.testing.assert_close(fh.get_tensor("alphas_cumprod").float(), schedule.alphas_cumprod, rtol=2e-3, atol=1e-5)
        assert fh.get_tensor("betas").shape == (schedule.config.num_train_timesteps,)
    from diffusers import StableDiffusionXLPipeline

    xl = StableDiffusionXLPipeline.from_pretrained(build_tiny_sdxl(tmp_path / "xl"))
    path = save_single_file(xl, tmp_path / "xl.safetensors", noise_schedule=xl.scheduler.config)
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        assert "alphas_cumprod" not in keys  # SDXL checkpoints store no schedule
        assert fh.get_tensor("conditioner.embedders.1.model.logit_scale").item() == pytest.approx(math.log(100))
