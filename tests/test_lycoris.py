"""LyCORIS (LoCon / LoHa / LoKr via lycoris-lora): real tiny runs, A1111 keys, and the reloaded
effect checked against an independent implementation of A1111's merge math."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import denoising_loss, lora_job
from safetensors import safe_open
from safetensors.torch import load_file
from test_lora_training import _unet_inputs

from engine.config.job import ConfigError, parse_config
from engine.models.loader import load_sd_components
from engine.training.loop import train

ALGOS = ("locon", "loha", "lokr")
SUFFIXES = {"locon": {"lora_down.weight", "lora_up.weight", "alpha"},
            "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
            "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}}


# --- A reference of how A1111's Lora extension turns a module's tensors into a weight delta. ---

def _lowrank(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 4 and down.dim() == 4:  # conv: [r,in,k,k] then [out,r,1,1]
        return torch.einsum("or,rikl->oikl", up.flatten(1), down)
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def a1111_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ΔW for one module, before the user's multiplier (LoRA/LoCon, LoHa, LoKr; no CP factors)."""
    alpha = float(t["alpha"]) if "alpha" in t else None
    if "lora_down.weight" in t:
        dim = t["lora_down.weight"].shape[0]
        delta = _lowrank(t["lora_up.weight"], t["lora_down.weight"], shape)
    elif "hada_w1_a" in t:
        dim = t["hada_w1_b"].shape[0]
        delta = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape)
    else:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        if "lokr_w2" in t:
            w2 = t["lokr_w2"]
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        dim = (t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else
               t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None)
        if len(shape) == 4:
            w2 = w2.reshape(shape[0] // w1.shape[0], shape[1] // w1.shape[1], *shape[2:])
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2).reshape(shape)
    scale = alpha / dim if (alpha and dim) else 1.0
    return delta * scale


def file_modules(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, rest = key.split(".", 1)
        out.setdefault(module, {})[rest] = value
    return out


def a1111_names(model) -> dict[str, torch.nn.Module]:
    """File module key -> module of our diffusers model, for the merge math: diffusers paths or
    original (LDM / SGM) paths for the UNet (which names A1111 accepts is checked by
    test_consumer_keys on the real architectures), CLIP under ``text_model``, ``lora_te`` for one
    text encoder, ``lora_te1`` / ``lora_te2`` for SDXL's two."""
    from engine.models.single_file import unet_key_to_original

    names = {f"lora_unet_{n}".replace(".", "_"): m for n, m in model.unet.named_modules() if n}
    for n, m in model.unet.named_modules():
        if hasattr(m, "weight") and n:
            original = unet_key_to_original(f"{n}.weight", model.unet.config).removesuffix(".weight")
            names[f"lora_unet_{original}".replace(".", "_")] = m
    encoders = [te for te in (model.text_encoder, model.text_encoder_2) if te is not None]
    prefixes = ["lora_te"] if len(encoders) == 1 else ["lora_te1", "lora_te2"]
    for prefix, te in zip(prefixes, encoders):
        root = "" if hasattr(te, "text_model") else "text_model."
        names |= {f"{prefix}_{root}{n}".replace(".", "_"): m for n, m in te.named_modules() if n}
    return names


def merge_like_a1111(model, state: dict[str, torch.Tensor], multiplier: float = 1.0) -> int:
    names = a1111_names(model)
    with torch.no_grad():
        for key, tensors in file_modules(state).items():
            module = names[key]  # KeyError = a key A1111 could not place
            module.weight += multiplier * a1111_delta(tensors, module.weight.shape)
    return len(file_modules(state))


def _job(tiny_model_dir, tiny_dataset, out, algo: str, **network):
    return parse_config(lora_job(tiny_model_dir, tiny_dataset, out, network={
        "type": algo, "dim": 4, "alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0, **network}))


@pytest.fixture(scope="module", params=ALGOS)
def lyco_run(request, tiny_model_dir, tiny_dataset, tmp_path_factory):
    """A real 18-step run per algorithm; the model it trained stays hooked for comparison."""
    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp(request.param), request.param)
    model = load_sd_components(str(tiny_model_dir))
    result = train(cfg, model=model)
    return request.param, cfg, result, model


def test_keys_are_a1111_keys_with_configured_alpha(lyco_run, tiny_model_dir):
    algo, _, result, _ = lyco_run
    base = load_sd_components(str(tiny_model_dir))
    names = a1111_names(base)
    modules = file_modules(load_file(str(result.final_path)))
    assert set(modules) <= set(names), sorted(set(modules) - set(names))[:3]
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_") for k in modules)
    for must in ("lora_unet_conv_in", "lora_unet_down_blocks_0_resnets_0_conv1",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"):
        assert must in modules
    for key, tensors in modules.items():
        assert set(tensors) <= SUFFIXES[algo], (key, set(tensors))
        is_3x3 = getattr(names[key], "kernel_size", (1, 1)) != (1, 1)
        if algo == "lokr" and not {"lokr_w1_b", "lokr_w2_b"} & set(tensors):
            continue  # full-matrix LoKr (dim >= the layer's factors): no rank, scale 1, alpha = dim
        assert float(tensors["alpha"]) == pytest.approx(1.0 if is_3x3 else 2.0), key
    with safe_open(str(result.final_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == algo
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"


def test_a1111_merge_equals_trained_network(lyco_run, tiny_model_dir):
    """The file, merged into the base by A1111's math, acts exactly like the network we trained."""
    _, _, result, trained = lyco_run
    base = load_sd_components(str(tiny_model_dir))
    x, t, ctx = _unet_inputs(base.unet)
    ids = base.tokenizer(["zkz star"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        base_out, base_te = base.unet(x, t, ctx).sample, base.text_encoder(ids)[0]
        want, want_te = trained.unet(x, t, ctx).sample, trained.text_encoder(ids)[0]
    assert (want - base_out).abs().max() > 1e-4 and (want_te - base_te).abs().max() > 1e-4
    merge_like_a1111(base, load_file(str(result.final_path)))
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, t, ctx).sample, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(base.text_encoder(ids)[0], want_te, rtol=1e-4, atol=1e-5)


def test_reloaded_network_scales_with_weight(lyco_run, tiny_model_dir):
    """Our reload (used by the grid): weight 0 is the base bit for bit, 0.5 is half of A1111's ΔW."""
    from engine.generate.swappers import NetworkSwapper

    _, _, result, _ = lyco_run
    model, ref = load_sd_components(str(tiny_model_dir)), load_sd_components(str(tiny_model_dir))
    x, t, ctx = _unet_inputs(model.unet)
    with torch.no_grad():
        base_out = model.unet(x, t, ctx).sample
    swapper = NetworkSwapper(model)
    for path in result.saved:
        swapper.load(path)
    assert swapper.injections == 1
    swapper.set_weight(0.0)
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, ctx).sample, base_out)
    swapper.set_weight(0.5)
    merge_like_a1111(ref, load_file(str(result.final_path)), multiplier=0.5)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, ctx).sample, ref.unet(x, t, ctx).sample,
                                   rtol=1e-4, atol=1e-5)


def test_loss_goes_down(lyco_run, tiny_model_dir, tiny_dataset):
    _, _, result, _ = lyco_run
    model = load_sd_components(str(tiny_model_dir))
    before = denoising_loss(model, tiny_dataset)
    merge_like_a1111(model, load_file(str(result.final_path)))
    after = denoising_loss(model, tiny_dataset)
    assert after < 0.95 * before, (before, after)
    assert sum(result.losses[-6:]) < sum(result.losses[:6])


def test_locon_file_loads_in_diffusers(tiny_model_dir, tiny_dataset, tmp_path):
    """A LyCORIS LoCon file is plain kohya LoCon: diffusers reads it and agrees with A1111's math."""
    from diffusers import StableDiffusionPipeline

    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path, "locon", preset="attn-mlp", conv_dim=0)
    cfg.training.epochs = 1
    result = train(cfg)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.load_lora_weights(str(result.final_path), adapter_name="x")
    ref = load_sd_components(str(tiny_model_dir))
    merge_like_a1111(ref, load_file(str(result.final_path)))
    x, t, ctx = _unet_inputs(ref.unet)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, ctx).sample, ref.unet(x, t, ctx).sample,
                                   rtol=1e-4, atol=1e-5)


def test_train_unet_only_and_attn_only_preset(tiny_model_dir, tiny_dataset, tmp_path):
    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path, "loha", preset="attn-only",
               train_unet_only=True)
    cfg.training.max_steps = 2
    keys = load_file(str(train(cfg).final_path)).keys()
    modules = {k.split(".")[0] for k in keys}
    assert modules and all(k.startswith("lora_unet_") for k in modules)
    assert all("_attn1_" in k or "_attn2_" in k for k in modules), sorted(modules)[:3]


@pytest.mark.parametrize("network, message", [
    ({"type": "loha", "factor": 4}, "only apply to 'lokr'"),
    ({"type": "lokr", "factor": 0}, "network.factor"),
    ({"type": "locon", "preset": "everything"}, "network.preset"),
    ({"type": "loha", "dim": 0}, "network.dim"),
])
def test_config_rejections(tiny_model_dir, tiny_dataset, tmp_path, network, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, network=network))


def test_grid_refuses_mixing_lora_and_loha(lyco_run, trained_lora, tiny_model_dir):
    from engine.generate.lora_apply import LoraFileError
    from engine.generate.swappers import NetworkSwapper

    algo, _, result, _ = lyco_run
    swapper = NetworkSwapper(load_sd_components(str(tiny_model_dir)))
    swapper.load(result.final_path)
    if algo == "locon":  # a LoCon file is plain kohya LoRA: it mixes with one
        swapper.load(trained_lora[1].final_path)
        return
    with pytest.raises(LoraFileError, match="one grid per file type"):
        swapper.load(trained_lora[1].final_path)


def test_foreign_file_without_our_metadata(lyco_run, tiny_model_dir, tmp_path):
    """A file from another trainer (no ss_network_args) goes through lycoris' generic reload."""
    from safetensors.torch import save_file

    from engine.generate.lora_apply import LoraFileError
    from engine.generate.swappers import NetworkSwapper

    algo, _, result, _ = lyco_run
    state = load_file(str(result.final_path))
    foreign = tmp_path / "foreign.safetensors"
    save_file(state, str(foreign))
    model, ref = load_sd_components(str(tiny_model_dir)), load_sd_components(str(tiny_model_dir))
    swapper = NetworkSwapper(model)
    if algo == "lokr":  # lycoris guesses the Kronecker factor of conv_in (4 -> 32) wrongly
        with pytest.raises(LoraFileError, match="foreign.safetensors"):
            swapper.load(foreign)
        return
    swapper.load(foreign)
    merge_like_a1111(ref, state)
    x, t, ctx = _unet_inputs(model.unet)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, ctx).sample, ref.unet(x, t, ctx).sample,
                                   rtol=1e-4, atol=1e-5)


def test_bf16_and_gradient_checkpointing(tiny_model_dir, tiny_dataset, tmp_path):
    """Half-precision base + fp32 LyCORIS modules, with checkpointed UNet blocks."""
    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path, "loha")
    cfg.training.mixed_precision, cfg.training.gradient_checkpointing = "bf16", True
    cfg.training.max_steps = 3
    result = train(cfg)
    state = load_file(str(result.final_path))
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.endswith("hada_w2_a"))
