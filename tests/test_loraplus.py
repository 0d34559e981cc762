"""LoRA+: the up (B) matrices learn at ratio x the learning rate, per part; the file records the
ratios where kohya does (ss_network_args) and its card shows them."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import lora_job
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.training.loop import train
from engine.training.optim import lr_multipliers, param_groups


def test_param_groups_put_each_parts_up_matrices_in_a_faster_group():
    cfg = parse_config(lora_job("m", "d", "o", optimizer={"lr": 1e-4, "text_encoder_lr": 5e-5})).optimizer
    down_u, up_u, down_t, up_t = (torch.nn.Parameter(torch.zeros(2)) for _ in range(4))
    scale = lr_multipliers([down_u, up_u], [up_u, up_t], (16.0, 4.0), {})
    groups = param_groups([down_u, up_u], [down_t, up_t], cfg, scale)
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(1, 1e-4), (1, 1.6e-3), (1, 5e-5), (1, 2e-4)]
    assert groups[1]["params"][0] is up_u and groups[3]["params"][0] is up_t
    plain = param_groups([down_u, up_u], [down_t, up_t], cfg, lr_multipliers([down_u, up_u], [up_u, up_t], (1.0, 1.0), {}))
    assert [(len(g["params"]), g["lr"]) for g in plain] == [(2, 1e-4), (2, 5e-5)]


def test_ratios_and_rules():
    net = parse_config(lora_job("m", "d", "o", network={"loraplus_lr_ratio": 16, "loraplus_text_encoder_lr_ratio": 4})).network
    assert net.loraplus_ratios() == (16.0, 4.0)
    assert parse_config(lora_job("m", "d", "o")).network.loraplus_ratios() == (1.0, 1.0)
    locon = parse_config(lora_job("m", "d", "o", network={"type": "locon", "loraplus_lr_ratio": 8})).network
    assert locon.loraplus_ratios() == (8.0, 8.0)
    with pytest.raises(Exception) as err:
        parse_config(lora_job("m", "d", "o", network={"type": "loha", "loraplus_lr_ratio": 8}))
    assert err.value.problems[0]["cause"].key == "cfg_loraplus_type"


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_up_matrices_move_ratio_times_further(kind, tiny_model_dir, tiny_dataset, tmp_path):
    """Same seed, same steps: with ratio 16 the up matrices end ~16x larger (they start at zero
    and Adam moves each weight by about lr per step), the down matrices about as before."""
    from engine.export.card_facts import gather_facts

    network = {"type": kind, "dim": 4, "alpha": 2.0, "train_unet_only": True}

    def run(name, **extra):
        cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / name, network={**network, **extra},
                                    optimizer={"type": "AdamW", "lr": 1e-4},
                                    training={"epochs": 1, "max_steps": 3, "batch_size": 2, "seed": 1}))
        result = train(cfg)
        return load_file(str(result.final_path)), result.final_path, cfg

    (plain, _, _), (plus, path, cfg) = run("plain"), run("plus", loraplus_lr_ratio=16)

    def mean_abs(state, part):
        return torch.stack([v.float().abs().mean() for k, v in state.items() if k.endswith(f"{part}.weight")]).mean()

    up = (mean_abs(plus, "lora_up") / mean_abs(plain, "lora_up")).item()
    down = (mean_abs(plus, "lora_down") / mean_abs(plain, "lora_down")).item()
    assert 10 < up < 20 and 0.8 < down < 1.25, (up, down)
    with safe_open(str(path), "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
    assert args["loraplus_lr_ratio"] == "16.0" and "loraplus_unet_lr_ratio" not in args
    for facts in (gather_facts(path), gather_facts(path, cfg)):
        assert facts.params["loraplusLrRatio"] == 16.0, facts.params
