"""Training options that change how the loop runs: SD2 v-prediction, gradient accumulation,
gradient checkpointing, mixed precision on a CPU, min-SNR and noise offset, conv (LoCon) ranks."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import lora_job
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.training.callbacks import Callbacks
from engine.training.loop import train


class Logs(Callbacks):
    def __init__(self):
        self.lines, self.lrs = [], []

    def on_log(self, message):
        self.lines.append(message)

    def on_step(self, info):
        self.lrs.append(info.lr)


def meta(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_sd2_v_prediction_lora(tmp_path, tiny_dataset):
    from engine.models.toy import build_tiny_sd2

    model = build_tiny_sd2(tmp_path / "sd2")
    job = lora_job(model, tiny_dataset, tmp_path / "out", training={"epochs": 1, "max_steps": 2,
                                                                      "min_snr_gamma": 5.0})
    result = train(parse_config(job))
    m = meta(result.final_path)
    assert m["ss_base_model_version"] == "sd_v2" and m["ss_v2"] == "True"
    assert m["ss_v_parameterization"] == "True" and m["modelspec.prediction_type"] == "v_prediction"
    assert m["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert all(math.isfinite(x) for x in result.losses)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, tiny_model_dir, tiny_dataset):
    logs = Logs()
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={
        "epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 3},
        scheduler={"type": "linear", "warmup_steps": 1})
    result = train(parse_config(job), logs)
    # 12 images per epoch / batch 2 = 6 micro-batches = 2 optimizer steps per epoch
    assert result.steps == 4 and len(result.losses) == 4
    assert logs.lrs == pytest.approx([2e-3, 2e-3 * 2 / 3, 2e-3 / 3, 0.0])
    assert meta(result.final_path)["ss_gradient_accumulation_steps"] == "3"


def test_gradient_checkpointing_gives_the_same_lora(tmp_path, tiny_model_dir, tiny_dataset):
    results = []
    for ckpt in (False, True):
        job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / str(ckpt),
                       training={"epochs": 1, "max_steps": 2, "gradient_checkpointing": ckpt})
        results.append(load_file(str(train(parse_config(job)).final_path)))
    a, b = results
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_fp16_on_cpu_falls_back_and_says_so(tmp_path, tiny_model_dir, tiny_dataset):
    logs = Logs()
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path,
                   training={"epochs": 1, "max_steps": 1, "mixed_precision": "fp16"})
    result = train(parse_config(job), logs)
    assert any("fp16 needs a CUDA GPU" in line for line in logs.lines)
    assert meta(result.final_path)["ss_mixed_precision"] == "no"


def test_bf16_autocast_on_cpu_trains(tmp_path, tiny_model_dir, tiny_dataset):
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path,
                   training={"epochs": 1, "max_steps": 1, "mixed_precision": "bf16", "noise_offset": 0.1},
                   output={"save_precision": "bf16"})
    result = train(parse_config(job))
    state = load_file(str(result.final_path))
    assert meta(result.final_path)["ss_mixed_precision"] == "bf16"
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert math.isfinite(result.losses[0])


def test_conv_rank_adds_locon_layers(tmp_path, tiny_model_dir, tiny_dataset):
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 1, "max_steps": 1},
                   network={"dim": 4, "alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0})
    result = train(parse_config(job))
    state = load_file(str(result.final_path))
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tuple(state[f"{conv}.lora_down.weight"].shape)[:2] == (2, 32)
    assert state[f"{conv}.lora_down.weight"].shape[2:] == (3, 3)
    assert state[f"{conv}.alpha"].item() == 1.0
    assert "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight" in state
    assert meta(result.final_path)["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1.0"}'
