"""DoRA (LyCORIS dora_wd): real tiny runs; the file's dora_scale read by A1111's and ComfyUI's
rules (re-implemented here from their behaviour) gives exactly the network we trained."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import lora_job
from safetensors import safe_open
from safetensors.torch import load_file
from test_lora_training import _unet_inputs
from test_lycoris import a1111_delta, a1111_names, file_modules

from engine.config.job import ConfigError, parse_config
from engine.models.loader import load_sd_components
from engine.training.loop import train


def a1111_dora_delta(t: dict[str, torch.Tensor], weight: torch.Tensor, multiplier: float) -> torch.Tensor:
    """A1111 1.10's update for a module with ``dora_scale``: the scaled low-rank delta is added,
    every input column of the sum is rescaled to the file's magnitude, the base is taken off again,
    and the result times the user's multiplier is added."""
    merged = weight + a1111_delta(t, weight.shape)
    norm_dims = weight.dim() - 1
    column_norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
                   .reshape(merged.shape[1], *[1] * norm_dims).transpose(0, 1))
    return (merged * (t["dora_scale"] / column_norm) - weight) * multiplier


def comfyui_dora_weight(t: dict[str, torch.Tensor], weight: torch.Tensor, strength: float) -> torch.Tensor:
    """ComfyUI's weight_decompose: a dora_scale whose first size is the layer's output count is
    taken per output row (normalised by the BASE weight's norm); any other per input column."""
    calc = weight + a1111_delta(t, weight.shape)
    scale = t["dora_scale"]
    if scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1))
    calc = calc * (scale / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (calc - weight)


@pytest.fixture(scope="module", params=("locon", "loha", "lokr"))
def dora_run(request, tiny_model_dir, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"dora-{request.param}")
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, out, network={
        "type": request.param, "dim": 4, "alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0, "dora_wd": True}))
    model = load_sd_components(str(tiny_model_dir))
    return request.param, cfg, train(cfg, model=model), model


def test_file_has_input_axis_dora_scale_and_records_it(dora_run, tiny_model_dir):
    from engine.export.card_facts import gather_facts

    algo, cfg, result, _ = dora_run
    names = a1111_names(load_sd_components(str(tiny_model_dir)))
    modules = file_modules(load_file(str(result.final_path)))
    assert modules and all("dora_scale" in t for t in modules.values())
    for key, t in modules.items():
        weight = names[key].weight
        # [1, in] for a linear layer, [1, in, 1, 1] for a conv: one magnitude per input channel
        assert t["dora_scale"].shape == (1, weight.shape[1], *[1] * (weight.dim() - 2)), key
        assert weight.shape[0] != 1  # ComfyUI tells the axis by this size: it must not be ambiguous
    with safe_open(str(result.final_path), "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
    assert args["algo"] == algo and args["dora_wd"] == "True" and args["wd_on_output"] == "False"
    for facts in (gather_facts(result.final_path), gather_facts(result.final_path, cfg)):
        assert facts.params["dora"] is True, facts.params


def test_magnitudes_learn(dora_run, tiny_model_dir):
    """DoRA's own effect: the magnitudes are trained (they start as the base's column norms), and
    the merged weight's column norms are exactly the file's magnitudes."""
    _, _, result, _ = dora_run
    names = a1111_names(load_sd_components(str(tiny_model_dir)))
    moved = []
    for key, t in file_modules(load_file(str(result.final_path))).items():
        weight = names[key].weight.detach()
        base_norm = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
        moved.append((t["dora_scale"].flatten() - base_norm).abs().max().item())
        merged = weight + a1111_dora_delta(t, weight, 1.0)
        torch.testing.assert_close(merged.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1),
                                   t["dora_scale"].flatten(), rtol=1e-4, atol=1e-5)
    assert max(moved) > 1e-3, max(moved)


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
def test_a1111_and_comfyui_give_the_trained_network(dora_run, tiny_model_dir, multiplier):
    _, _, result, trained = dora_run
    state = load_file(str(result.final_path))
    a1111, comfy = load_sd_components(str(tiny_model_dir)), load_sd_components(str(tiny_model_dir))
    base = load_sd_components(str(tiny_model_dir))
    x, t, ctx = _unet_inputs(base.unet)
    ids = base.tokenizer(["zkz star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    a_names, c_names = a1111_names(a1111), a1111_names(comfy)
    with torch.no_grad():
        for key, tensors in file_modules(state).items():
            w = a_names[key].weight
            w += a1111_dora_delta(tensors, w.clone(), multiplier)
            c_names[key].weight.copy_(comfyui_dora_weight(tensors, c_names[key].weight.clone(), multiplier))
    if multiplier == 1.0:
        want, want_te = trained.unet(x, t, ctx).sample, trained.text_encoder(ids)[0]
    else:  # our grid's reload at half weight
        from engine.generate.swappers import NetworkSwapper

        swapper = NetworkSwapper(base)
        with torch.no_grad():
            before = base.unet(x, t, ctx).sample
        for path in result.saved:  # as the grid does: an earlier epoch first, then the final file
            swapper.load(path)
            swapper.set_weight(0.0)
            with torch.no_grad():  # weight 0 is the base, bit for bit
                assert torch.equal(base.unet(x, t, ctx).sample, before)
            swapper.set_weight(multiplier)
        want, want_te = base.unet(x, t, ctx).sample, base.text_encoder(ids)[0]
    with torch.no_grad():
        for model in (a1111, comfy):
            torch.testing.assert_close(model.unet(x, t, ctx).sample, want.detach(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(model.text_encoder(ids)[0], want_te.detach(), rtol=1e-4, atol=1e-5)


def test_lora_type_points_to_locon(tiny_model_dir, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="locon"):
        parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, network={"dora_wd": True}))
