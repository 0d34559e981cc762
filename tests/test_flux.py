"""Flux.1 LoRA on a tiny Flux (the real classes: FluxTransformer2DModel with one double and one
single block, T5 and CLIP encoders, a 16-channel VAE; tiny widths, random weights).

The file is checked against its consumers: ComfyUI's key map for Flux (kohya's names over the
original checkpoint's fused weights), diffusers' FluxPipeline.load_lora_weights (it must draw
what our in-memory model draws), and, at Flux.1's real width where diffusers hard-codes it, the
single block's fused q | k | v | MLP weight."""
from __future__ import annotations

import pytest
import torch
from conftest import stop_at
from lora_key_rules import (
    comfyui_flux_key_map,
    comfyui_flux_to_original,
    flux_original_shapes,
    kohya_flux_load,
    module_deltas,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.demo.learning import PURPLE_CROSS


def flux_job(model_dir, data, out_dir, **overrides) -> dict:
    job = {"model": {"base": str(model_dir), "local_files_only": True},
           "dataset": {"path": str(data), "resolution": 64},
           "network": {"type": "lora", "dim": 4, "alpha": 2.0},
           "optimizer": {"lr": 1e-2}, "training": {"epochs": 2, "batch_size": 2, "seed": 3},
           "output": {"dir": str(out_dir), "name": "tinyflux", "save_every_n_epochs": 1, "save_precision": "fp32",
                      "trigger_phrase": "zkz"}}
    for section, values in overrides.items():
        job.setdefault(section, {}).update(values)
    return job


@pytest.fixture(scope="module")
def flux_dir(tiny_flux_dir):
    return tiny_flux_dir


@pytest.fixture(scope="module")
def flux_data(tmp_path_factory):
    return PURPLE_CROSS.write(tmp_path_factory.mktemp("flux-data"), repeats=2)


@pytest.fixture(scope="module")
def trained(flux_dir, flux_data, tmp_path_factory):
    from engine.config.job import parse_config
    from engine.training.loop import train

    cfg = parse_config(flux_job(flux_dir, flux_data, tmp_path_factory.mktemp("flux-out")))
    return cfg, train(cfg)


def test_a_flux_folder_is_its_own_family(flux_dir):
    from engine.models.loader import detect_family_from_folder, load_sd_components

    assert detect_family_from_folder(flux_dir) == "flux1"
    model = load_sd_components(str(flux_dir), local_files_only=True)
    assert model.family == "flux1" and model.prediction_type == "flow"
    assert type(model.unet.transformer).__name__ == "FluxTransformer2DModel"
    assert [type(te).__name__ for te in model.text_encoders] == ["CLIPTextModel", "T5EncoderModel"]


def test_the_file_maps_fully_under_comfyuis_flux_rules(trained, flux_dir):
    """Every module is a kohya name of an original weight, with that weight's shape; the fused
    weights hold the parts in ComfyUI's order (its diffusers-name offsets)."""
    from engine.models.loader import load_sd_components

    _, result = trained
    state = load_file(str(result.final_path))
    transformer = load_sd_components(str(flux_dir), local_files_only=True).unet.transformer
    key_map = comfyui_flux_key_map(transformer)
    deltas = module_deltas(state)
    assert deltas and all(key_map.get(m) == shape for m, shape in deltas.items()), \
        {m: (tuple(s), key_map.get(m)) for m, s in deltas.items() if key_map.get(m) != s}
    wanted = {orig for orig, _, _ in comfyui_flux_to_original(transformer).values() if "mod" not in orig}
    assert {m.removeprefix("lora_unet_") for m in deltas} == {o.replace(".", "_") for o in wanted}
    assert all(f"{m}.alpha" in state for m in deltas)


def test_kohyas_flux_loader_takes_every_key_and_applies_the_trained_change(tmp_path):
    """kohya sd-scripts' own loader rules (lora_key_rules.kohya_flux_load) on our file: every key
    lands in a module of its network with the module's shapes, nothing is dropped, and the change
    it adds to each fused original weight holds our layers' trained changes in the original's
    row order."""
    from engine.models.toy import tiny_flux_components
    from engine.networks import flux_lora
    from engine.networks.lora import lora_layers

    transformer = tiny_flux_components(0, double_blocks=2, single_blocks=2)["transformer"]
    _random_lora(transformer)
    state = flux_lora.kohya_flux_state_dict(transformer)
    deltas, problems = kohya_flux_load(flux_original_shapes(transformer), state)
    assert not problems, problems
    assert len(deltas) == len(state) // 3 == 8 * 2 + 2 * 2
    layers = lora_layers(transformer)
    for diff, (orig, start, rows) in comfyui_flux_to_original(transformer).items():
        name = "lora_unet_" + orig.replace(".", "_")
        if name not in deltas:
            assert "mod" in orig  # (the modulation layers are not trained)
            continue
        layer = layers[diff]
        ours = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        torch.testing.assert_close(deltas[name][start:start + rows], ours.detach())
    # the rules do fail: a renamed key is dropped by kohya's loader, a missing alpha stops it
    bad = dict(state)
    bad["lora_unet_double_blocks_0_img_attn_q.lora_up.weight"] = bad.pop(
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
    found = kohya_flux_load(flux_original_shapes(transformer), bad)[1]
    assert any("dropped" in p for p in found) and any("missing" in p for p in found), found
    no_alpha = {k: v for k, v in state.items() if k != "lora_unet_single_blocks_0_linear1.alpha"}
    assert any("no alpha" in p for p in kohya_flux_load(flux_original_shapes(transformer), no_alpha)[1])


def test_metadata_names_flux(trained):
    _, result = trained
    with safe_open(str(result.final_path), "pt") as fh:
        meta = fh.metadata()
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_network_module"] == "networks.lora_flux"
    assert meta["ss_network_train_unet_only"] == "True" and "modelspec.prediction_type" not in meta


def _random_lora(transformer, seed: int = 1):
    from engine.networks import flux_lora, lora

    lora.inject_lora(transformer, flux_lora.flux_targets(transformer, 4, 2.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _denoise(transformer, seed: int = 0) -> torch.Tensor:
    from engine.models.flux import FluxDenoiser

    g = torch.Generator().manual_seed(seed)
    x, hidden = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    with torch.no_grad():
        return FluxDenoiser(transformer)(x, torch.tensor([0.6]), hidden, {"pooled_projections": pooled}).sample


@pytest.mark.parametrize("blocks", [(1, 0, 32), (0, 1, 3072)], ids=["double-tiny", "single-real-width"])
def test_diffusers_draws_what_our_model_draws(tmp_path, blocks):
    """FluxPipeline.load_lora_weights on our file changes the transformer exactly as our own
    layers do. diffusers splits a single block's fused linear1 at Flux.1's real sizes (3072 x 3 +
    12288), so that block is tested at real width."""
    from diffusers import FluxPipeline

    from engine.models.toy import tiny_flux_components
    from engine.networks import flux_lora

    double, single, width = blocks
    ours = tiny_flux_components(0, double_blocks=double, single_blocks=single, width=width)["transformer"]
    before = _denoise(ours)
    _random_lora(ours)
    expected = _denoise(ours)
    save_file({k: v.contiguous() for k, v in flux_lora.kohya_flux_state_dict(ours).items()}, tmp_path / "l.safetensors")
    del ours
    pipe = FluxPipeline(**tiny_flux_components(0, double_blocks=double, single_blocks=single, width=width))
    pipe.load_lora_weights(str(tmp_path / "l.safetensors"))
    got = _denoise(pipe.transformer)
    assert (expected - before).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_fused_delta_is_comfyuis(tmp_path):
    """ComfyUI adds strength x alpha / rank x up @ down to the fused weight: its rows for q, k and
    v are exactly our three layers' changes."""
    from engine.models.toy import tiny_flux_components
    from engine.networks import flux_lora
    from engine.networks.lora import lora_layers

    transformer = tiny_flux_components(0)["transformer"]
    _random_lora(transformer)
    state = flux_lora.kohya_flux_state_dict(transformer)
    layers = lora_layers(transformer)
    for diff, (orig, start, rows) in comfyui_flux_to_original(transformer).items():
        key = "lora_unet_" + orig.replace(".", "_")
        if key + ".alpha" not in state:
            continue
        up, down = state[key + ".lora_up.weight"], state[key + ".lora_down.weight"]
        fused = float(state[key + ".alpha"]) / down.shape[0] * up @ down
        layer = layers[diff]
        ours = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        torch.testing.assert_close(fused[start:start + rows], ours)


def _fixed_noise_losses(flux_dir, flux_data, lora_file) -> tuple[float, float]:
    """The flow-matching loss at fixed noise and sigmas on the training images, on the full
    precision base without and with ``lora_file`` (applied by the grid's swapper)."""
    from engine.data.dataset import TrainingSamples
    from engine.data.folder import scan_dataset
    from engine.generate.lora_apply import LoraSwapper
    from engine.models.loader import load_sd_components
    from engine.training.conditioning import unet_conditioning
    from engine.training.data_setup import encode_latents
    from engine.training.objective import FlowObjective

    model = load_sd_components(str(flux_dir), local_files_only=True)
    data = TrainingSamples(scan_dataset(flux_data), 64)
    with torch.no_grad():
        latents = encode_latents(model, torch.stack([data.pixels(i) for i in range(4)]))
        hidden, added = unet_conditioning(model, model.text_encoders, data.captions()[:4], {}, 1, False, None,
                                          "cpu", torch.float32)
    objective = FlowObjective()

    def loss() -> float:
        g = torch.Generator().manual_seed(5)
        total = 0.0
        with torch.no_grad():
            for sigma in (0.2, 0.4, 0.6, 0.8):
                noise = torch.randn(latents.shape, generator=g)
                sigmas = torch.full((4,), sigma)
                pred = model.unet(objective.noisy(latents, noise, sigmas), sigmas, hidden, added).sample
                total += torch.nn.functional.mse_loss(pred, objective.target(latents, noise, sigmas)).item()
        return total

    base = loss()
    swapper = LoraSwapper(model)
    swapper.load(lora_file)
    swapper.set_weight(1.0)
    return base, loss()


def test_training_lowers_the_loss_at_fixed_noise(trained, flux_dir, flux_data):
    """The file must have learned something: the loss at fixed noise falls."""
    _, result = trained
    base, with_lora = _fixed_noise_losses(flux_dir, flux_data, result.final_path)
    assert with_lora < 0.95 * base, (with_lora, base)  # measured 4.98 vs 5.66


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_stop_then_resume_gives_the_same_file(flux_dir, flux_data, tmp_path, quantize):
    """Also on a quantized base (training.quantize_base): quantized again on resume, the same."""
    from engine.config.job import parse_config
    from engine.training.loop import train

    q = {"quantize_base": quantize}
    whole = train(parse_config(flux_job(flux_dir, flux_data, tmp_path / "whole", training=q)))
    job = flux_job(flux_dir, flux_data, tmp_path / "split", training=q, output={"save_state": True})
    token, cb = stop_at(5)
    train(parse_config(job), callbacks=cb, stop=token)
    resumed = train(parse_config(job), resume="auto")
    a, b = load_file(str(whole.final_path)), load_file(str(resumed.final_path))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_the_grid_swaps_epochs_in_place(trained, flux_dir, tmp_path):
    """Both epochs' files through one set of injected layers; weight 0 is the base, and the
    epochs draw different images."""
    import numpy as np
    from PIL import Image

    from engine.generate.grid import GridJob, run_grid
    from engine.models.loader import load_sd_components

    _, result = trained
    model = load_sd_components(str(flux_dir), local_files_only=True)
    job = GridJob(checkpoints=list(result.saved), prompts=["zkz, a cross on a white background"],
                  weights=[0.0, 1.0], steps=4, cfg_scale=3.5, width=64, height=64)
    grid = run_grid(model, job, tmp_path)
    cells = {k: np.asarray(Image.open(p), dtype=float) for k, p in grid.cells.items()}
    (e1w0, e1w1), (e2w0, e2w1) = [[cells[(r, c, 0)] for c in range(2)] for r in range(2)]
    assert np.array_equal(e1w0, e2w0)  # weight 0: the base, whichever file is loaded
    assert np.abs(e1w1 - e2w1).mean() > 0.1 and np.abs(e1w1 - e1w0).mean() > 0.1


def test_ddpm_options_are_refused_for_flux(flux_dir, flux_data, tmp_path):
    from engine.config.job import parse_config
    from engine.training.loop import train
    from engine.training.setup import SetupError

    job = flux_job(flux_dir, flux_data, tmp_path, training={"min_snr_gamma": 5.0, "epochs": 1})
    with pytest.raises(SetupError) as err:
        train(parse_config(job))
    assert err.value.key == "setup_flux_option" and "training.min_snr_gamma" in str(err.value)


def test_the_cli_trains_a_flux_lora_and_doctor_reads_the_job(flux_dir, flux_data, tmp_path):
    import subprocess
    import sys

    import tomli_w
    from conftest import ROOT

    job = tmp_path / "flux.toml"
    job.write_text(tomli_w.dumps(flux_job(flux_dir, flux_data, tmp_path / "out", training={"epochs": 1})))
    proc = subprocess.run([sys.executable, str(ROOT / "launcher.py"), "train", "--config", str(job)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stay frozen" in proc.stdout
    assert load_file(str(tmp_path / "out" / "tinyflux.safetensors"))
    doctor = subprocess.run([sys.executable, str(ROOT / "launcher.py"), "doctor", "--job", str(job)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert doctor.returncode == 0 and "Traceback" not in doctor.stderr, doctor.stderr[-3000:]


def test_buckets_validation_ema_and_loraplus_run_on_flux(flux_dir, tmp_path):
    """Non-square images in buckets (packed into 2x2 tokens at every bucket size), a held-out
    validation loss on the flow objective, an EMA file and LoRA+: one epoch, and the file says so."""
    import json
    import math

    from PIL import Image, ImageDraw

    from engine.config.job import parse_config
    from engine.training.loop import train

    data = tmp_path / "data" / "1_zkz"
    data.mkdir(parents=True)
    for i, (w, h) in enumerate([(256, 64), (64, 256), (128, 128), (192, 64)] * 2):
        im = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(150, 40, 200))
        im.save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("zkz, a purple disc", encoding="utf-8")
    job = flux_job(flux_dir, tmp_path / "data", tmp_path / "out",
                   dataset={"resolution": 128, "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 256,
                            "validation_split": 0.25},
                   network={"loraplus_lr_ratio": 16.0}, training={"epochs": 1, "ema": True, "ema_decay": 0.9})
    result = train(parse_config(job))
    with safe_open(str(result.final_path), "pt") as fh:
        meta = fh.metadata()
    assert len(json.loads(meta["ss_bucket_info"])["buckets"]) >= 3
    assert math.isfinite(float(meta["loraforge_validation_loss"]))
    assert json.loads(meta["ss_network_args"])["loraplus_lr_ratio"] == "16.0"
    assert all(k.startswith("lora_unet_") for k in load_file(str(result.final_path)))


def _original_layout(transformer) -> dict[str, torch.Tensor]:
    """The diffusers transformer's weights under the original (BFL) checkpoint's names, as
    ComfyUI's table and the reference implementation lay them out: q, k, v (and a single block's
    MLP input) fused, the final norm's (scale, shift) back in (shift, scale) order."""
    sd = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def move(dst: str, *srcs: str, swap: bool = False) -> None:
        for kind in ("weight", "bias"):
            parts = [sd.pop(f"{s}.{kind}") for s in srcs if f"{s}.{kind}" in sd]
            if parts:
                t = torch.cat(parts)
                out[f"{dst}.{kind}"] = torch.cat(t.chunk(2)[::-1]) if swap else t

    emb = "time_text_embed"
    for dst, src in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                     ("guidance_in", "guidance_embedder")):
        move(f"{dst}.in_layer", f"{emb}.{src}.linear_1")
        move(f"{dst}.out_layer", f"{emb}.{src}.linear_2")
    move("txt_in", "context_embedder")
    move("img_in", "x_embedder")
    for i in range(len(transformer.transformer_blocks)):
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        move(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        move(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
        move(f"{d}.img_attn.qkv", f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v")
        move(f"{d}.txt_attn.qkv", f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj")
        for side, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{d}.{side}_attn.norm.query_norm.scale"] = sd.pop(f"{b}.attn.{q}.weight")
            out[f"{d}.{side}_attn.norm.key_norm.scale"] = sd.pop(f"{b}.attn.{k}.weight")
        move(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        move(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")
        for side, ff in (("img", "ff"), ("txt", "ff_context")):
            move(f"{d}.{side}_mlp.0", f"{b}.{ff}.net.0.proj")
            move(f"{d}.{side}_mlp.2", f"{b}.{ff}.net.2")
    for i in range(len(transformer.single_transformer_blocks)):
        d, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        move(f"{d}.linear1", f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp")
        move(f"{d}.linear2", f"{b}.proj_out")
        move(f"{d}.modulation.lin", f"{b}.norm.linear")
        out[f"{d}.norm.query_norm.scale"] = sd.pop(f"{b}.attn.norm_q.weight")
        out[f"{d}.norm.key_norm.scale"] = sd.pop(f"{b}.attn.norm_k.weight")
    move("final_layer.linear", "proj_out")
    move("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    assert not sd, sorted(sd)  # every weight has its original name
    return out


@pytest.mark.parametrize("parts", ["folder", "comfyui", "folder-fp8-scaled"])
def test_a_downloaded_flux_transformer_file_loads_with_its_other_parts(tiny_flux_dir, tmp_path, parts):
    """flux1-dev.safetensors as downloaded (the original layout, ComfyUI's prefix) with the VAE,
    encoders and tokenizers of a Flux folder (model.config_dir), or as ComfyUI keeps them
    (model.clip_l, model.t5xxl, model.vae; T5's tokenizer from that ComfyUI folder; the config
    folder then only describes the architecture): the transformer comes back weight for weight.
    At Flux's real width (diffusers' converter splits a single block's linear1 at 3072), one
    double and one single block; without the other parts a message naming each. A transformer in
    ComfyUI's scaled fp8 (each weight times its scale) comes back to fp8 precision (read unscaled
    it would be far off)."""
    import shutil

    from engine.models.flux_files import FluxFiles
    from engine.models.loader import ModelLoadError, detect_family_from_keys, load_sd_components, single_file_keys
    from engine.models.toy import tiny_flux_components

    ours = tiny_flux_components(0, double_blocks=1, single_blocks=1, width=3072)["transformer"].to(torch.bfloat16)
    folder = tmp_path / "components"  # the tiny folder's encoders, with this transformer's config
    if parts == "comfyui":  # (only the architecture: the parts come from ComfyUI's files)
        _without_encoders(tiny_flux_dir, folder, keep_transformer=False)
    else:
        shutil.copytree(tiny_flux_dir, folder)
    shutil.rmtree(folder / "transformer")
    ours.save_config(folder / "transformer")
    original = {f"model.diffusion_model.{k}": v for k, v in _original_layout(ours).items()}
    if parts.endswith("fp8-scaled"):
        for key in [k for k, v in original.items() if k.endswith(".weight") and v.ndim == 2]:
            scale = original[key].float().abs().max() / 448.0
            original[key] = (original[key].float() / scale).to(torch.float8_e4m3fn)
            original[key[:-len("weight")] + "scale_weight"] = scale.reshape(1)
        original["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    save_file(original, tmp_path / "flux1-dev.safetensors")
    del original
    assert detect_family_from_keys(single_file_keys(tmp_path / "flux1-dev.safetensors")) == "flux1"
    extra: dict = {}
    if parts == "comfyui":
        clip_l, t5xxl, ae = _comfyui_install(tmp_path / "ComfyUI", load_sd_components(str(tiny_flux_dir),
                                                                                      local_files_only=True))
        extra = {"vae": str(ae), "flux_files": FluxFiles(clip_l=clip_l, t5xxl=t5xxl)}
    model = load_sd_components(str(tmp_path / "flux1-dev.safetensors"), single_file_config=folder,
                               dtype=torch.bfloat16, local_files_only=True, **extra)
    assert model.family == "flux1" and model.source_kind == "single_file"
    theirs = model.unet.transformer.state_dict()
    assert theirs.keys() == ours.state_dict().keys()
    if parts.endswith("fp8-scaled"):
        for k, v in ours.state_dict().items():
            error = ((theirs[k].float() - v.float()).norm() / v.float().norm().clamp_min(1e-12)).item()
            assert error < 0.1, (k, error)
    else:
        assert all(torch.equal(theirs[k], v) for k, v in ours.state_dict().items())
    with pytest.raises(ModelLoadError) as err:
        load_sd_components(str(tmp_path / "flux1-dev.safetensors"), local_files_only=True)
    assert err.value.key == "flux_parts_missing" and "model.config_dir" in str(err.value)
    assert "model.clip_l" in str(err.value) and "model.vae" in str(err.value)


def _comfyui_install(root, model, fp8_t5: bool = False, t5_dtype=torch.float16):
    """A ComfyUI installation holding ``model``'s encoders and VAE as its users download Flux's:
    clip_l and t5xxl in models/clip (T5 as fp16, or as ComfyUI's scaled fp8: a float8 weight and
    a scale per layer; ``t5_dtype`` float32: the exact weights), ae in models/vae (original
    layout), and ComfyUI's own T5 tokenizer folder. Returns (clip_l, t5xxl, ae)."""
    from engine.models.single_file import vae_original_state_dict

    for sub in ("models/unet", "models/clip", "models/vae", "comfy/text_encoders/t5_tokenizer"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_file({f"text_model.{k}": v.contiguous() for k, v in model.text_encoders[0].state_dict().items()},
              root / "models/clip/clip_l.safetensors")  # (as OpenAI's and ComfyUI's files name them)
    t5 = {k: v.detach().clone() for k, v in model.text_encoders[1].state_dict().items()}
    name = "t5xxl_fp16.safetensors"
    if fp8_t5:
        name = "t5xxl_fp8_e4m3fn_scaled.safetensors"
        for key in [k for k in t5 if k.endswith(".weight") and t5[k].ndim == 2]:
            scale = t5[key].abs().max() / 448.0
            t5[key] = (t5[key] / scale).to(torch.float8_e4m3fn)
            t5[key[:-len("weight")] + "scale_weight"] = scale.reshape(1)
        t5["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    else:
        t5 = {k: v.to(t5_dtype) for k, v in t5.items()}
    t5.pop("encoder.embed_tokens.weight")  # (tied to shared.weight; many files keep one name)
    save_file(t5, root / "models/clip" / name)
    save_file({k: v.contiguous() for k, v in vae_original_state_dict(model.vae).items()},
              root / "models/vae/ae.safetensors")
    model.tokenizer_2.save_pretrained(root / "comfy/text_encoders/t5_tokenizer")
    return root / "models/clip/clip_l.safetensors", root / "models/clip" / name, root / "models/vae/ae.safetensors"


def _without_encoders(tiny_flux_dir, folder, keep_transformer: bool = True):
    """The tiny Flux folder without its VAE, text encoders and T5 tokenizer (and, unless kept,
    transformer weights): the parts must then come from their own files."""
    import shutil

    shutil.copytree(tiny_flux_dir, folder)
    for weights in folder.rglob("*.safetensors"):
        if not (keep_transformer and weights.parent.name == "transformer"):
            weights.unlink()
    shutil.rmtree(folder / "tokenizer_2")
    return folder


@pytest.mark.parametrize("fp8_t5", [False, True], ids=["t5-fp16", "t5-fp8-scaled"])
def test_comfyuis_separate_files_load_as_the_model_they_came_from(tiny_flux_dir, tmp_path, fp8_t5):
    """clip_l + t5xxl + ae as ComfyUI keeps them (and T5's tokenizer found in that ComfyUI
    folder): every part comes back as the model they were cut from (T5 to fp16 / fp8 precision:
    a scaled fp8 file read unscaled would be about 100x off)."""
    from engine.models.flux_files import FluxFiles
    from engine.models.loader import load_sd_components

    model = load_sd_components(str(tiny_flux_dir), local_files_only=True)
    clip_l, t5xxl, ae = _comfyui_install(tmp_path / "ComfyUI", model, fp8_t5)
    got = load_sd_components(str(_without_encoders(tiny_flux_dir, tmp_path / "flux")), vae=str(ae),
                             flux_files=FluxFiles(clip_l=clip_l, t5xxl=t5xxl), local_files_only=True)
    for ours, theirs in ((model.vae, got.vae), (model.text_encoders[0], got.text_encoders[0])):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = got.tokenizer_2(["zkz, a green disc"], return_tensors="pt").input_ids
    assert ids.tolist() == model.tokenizer_2(["zkz, a green disc"], return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        want, have = model.text_encoders[1](ids)[0], got.text_encoders[1](ids)[0]
    error = ((have - want).norm() / want.norm()).item()
    assert error < (0.1 if fp8_t5 else 0.01), error


def test_a_flux_lora_trains_from_comfyuis_files_and_what_is_missing_is_named(tiny_flux_dir, flux_data, tmp_path,
                                                                              server):
    from engine.config.job import parse_config
    from engine.models.loader import ModelLoadError, load_sd_components
    from engine.training.loop import train
    from engine.training.setup import SetupError

    model = load_sd_components(str(tiny_flux_dir), local_files_only=True)
    clip_l, t5xxl, ae = _comfyui_install(tmp_path / "ComfyUI", model, t5_dtype=torch.float32)
    files = {"base": str(_without_encoders(tiny_flux_dir, tmp_path / "flux")), "vae": str(ae),
             "clip_l": str(clip_l), "t5xxl": str(t5xxl)}
    ran = train(parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path / "out", model=files,
                                      training={"epochs": 1}))).final_path
    reference = train(parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path / "folder-run",
                                            training={"epochs": 1}))).final_path
    a, b = load_file(str(ran)), load_file(str(reference))  # the same parts: the same training
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the compare step draws it with the run's own files (the base alone has no encoders or VAE)
    from gradio_client import Client
    from test_webapp import grid_args

    _, cells, message = Client(server, verbose=False).predict(
        *grid_args(files["base"], [ran], tmp_path / "grid", prompt="zkz, a cross"), api_name="/make_grid")
    assert message.startswith("saved 1 grid(s) and 2 cells"), message
    # no CLIP-L: the message names the setting and the file it wants (before the transformer loads)
    with pytest.raises(ModelLoadError) as err:
        train(parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path / "x", model={**files, "clip_l": None})))
    assert err.value.key == "flux_parts_missing" and "model.clip_l = clip_l.safetensors" in str(err.value)
    # T5 given as CLIP-L: refused by what it holds, not loaded with random layers
    with pytest.raises(ModelLoadError) as err:
        train(parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path / "x", model={**files, "clip_l": str(t5xxl)})))
    assert err.value.key == "flux_encoder_kind" and "CLIP-L" in str(err.value)
    # Flux's encoder files with an SD base: refused, never silently unused
    with pytest.raises(SetupError) as err:
        train(parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path / "x",
                                    model={"base": "embedded", "clip_l": str(clip_l)})))
    assert err.value.key == "setup_flux_files"


def test_the_jobs_guidance_is_what_training_conditions_on(flux_dir, flux_data, tmp_path):
    """training.flux_guidance reaches the transformer's guidance input: the same step at another
    value trains another file (and the file says which)."""
    from engine.config.job import parse_config
    from engine.training.loop import train

    files = []
    for g in (1.0, 4.0):
        job = flux_job(flux_dir, flux_data, tmp_path / str(g), training={"epochs": 1, "max_steps": 1, "flux_guidance": g})
        files.append(train(parse_config(job)).final_path)
    a, b = load_file(str(files[0])), load_file(str(files[1]))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(files[1]), "pt") as fh:
        assert fh.metadata()["ss_guidance_scale"] == "4.0"
