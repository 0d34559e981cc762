"""Block learning-rate weights and per-block ranks (kohya's down/mid/up_lr_weight, block_dims ...):
modules are numbered as kohya and A1111's block-weight tools number the 25 blocks of SD 1.x/2.x
and the 23 of SDXL, each block learns at its weight, a block at 0 gets no LoRA, and the file and
its card say so."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import lora_job
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.methods.blocks import block_index
from engine.training.loop import train


@pytest.mark.parametrize("name, index", [
    ("conv_in", -1), ("time_embedding.linear_1", -1),
    ("down_blocks.0.attentions.0.proj_in", 1), ("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q", 2),
    ("down_blocks.0.downsamplers.0.conv", 3), ("down_blocks.3.resnets.1.conv1", 11),
    ("mid_block.attentions.0.proj_in", 12), ("up_blocks.0.resnets.0.conv1", 13),
    ("up_blocks.0.upsamplers.0.conv", 15), ("up_blocks.1.attentions.2.proj_out", 18),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", 24),
])
def test_block_numbers_follow_kohya(name, index):
    assert block_index(name) == index


def test_sd15_attention_lora_sits_in_the_17_blocks_block_weight_tools_know():
    """A1111's block-weight tools call an SD 1.5 attention LoRA's blocks IN01 IN02 IN04 IN05 IN07
    IN08 MID OUT03-OUT11: the real-size UNet's LoRA targets land in exactly those."""
    from diffusers import UNet2DConditionModel

    from engine.methods.lora import LoraNetworkConfig
    from engine.models.reference import reference_config_dir
    from engine.networks.lora import unet_targets

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(reference_config_dir("sd15") / "unet"))
    blocks = {block_index(t.name) for t in unet_targets(unet, LoraNetworkConfig())}
    assert blocks == {1, 2, 4, 5, 7, 8, 12, *range(16, 25)}, sorted(blocks)


def test_each_block_learns_at_its_weight_and_a_zero_block_has_no_lora(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.export.card_facts import gather_facts

    def run(name, **network):
        cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / name,
                                    network={"dim": 4, "alpha": 2.0, "train_unet_only": True, **network},
                                    optimizer={"type": "AdamW", "lr": 1e-4},
                                    training={"epochs": 1, "max_steps": 3, "batch_size": 2, "seed": 1}))
        result = train(cfg)
        return load_file(str(result.final_path)), result.final_path, cfg

    (plain, _, _) = run("plain")
    weights = {"down_lr_weight": [0.1] * 12, "mid_lr_weight": 0.0, "up_lr_weight": [1.0] * 12}
    (blocked, path, cfg) = run("blocked", **weights)

    def mean_up(state, part):
        return torch.stack([v.abs().mean() for k, v in state.items()
                            if k.startswith(f"lora_unet_{part}") and k.endswith("lora_up.weight")]).mean().item()

    assert any(k.startswith("lora_unet_mid_block") for k in plain)
    assert not any(k.startswith("lora_unet_mid_block") for k in blocked)  # weight 0: not in the file
    # up matrices start at zero and AdamW moves them by about lr per step: 0.1 x the rate, ~0.1 x the size
    down, up = mean_up(blocked, "down_blocks") / mean_up(plain, "down_blocks"), mean_up(blocked, "up_blocks") / mean_up(plain, "up_blocks")
    assert 0.05 < down < 0.2 and 0.8 < up < 1.25, (down, up)
    with safe_open(str(path), "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
    assert args["down_lr_weight"] == ",".join(["0.1"] * 12) and args["mid_lr_weight"] == "0"
    for facts in (gather_facts(path), gather_facts(path, cfg)):
        assert facts.params["midLrWeight"] == "0" and facts.params["downLrWeight"].startswith("0.1,"), facts.params


def test_block_weights_rules(tmp_path, tiny_dataset):
    from engine.config.base import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(lora_job("m", "d", "o", network={"down_lr_weight": [1.0] * 11}))  # kohya's 12 (or 9)
    assert err.value.problems[0]["cause"].key == "cfg_block_count"
    with pytest.raises(ConfigError) as err:
        parse_config(lora_job("m", "d", "o", network={"up_lr_weight": [1.0] * 11 + [-1.0]}))
    assert err.value.problems[0]["cause"].key == "cfg_block_weight"
    one = parse_config(lora_job("m", "d", "o", network={"mid_lr_weight": 0.5})).network
    assert one.mid_lr_weight == [0.5] and one.block_args() == {"mid_lr_weight": "0.5"}


@pytest.mark.parametrize("name, index", [
    ("time_embed.0", 0), ("input_blocks.0.0", 1), ("input_blocks.4.1.transformer_blocks.0.attn1.to_q", 5),
    ("lora_unet_input_blocks_8_1_proj_in", 9), ("middle_block.1.proj_in", 11), ("middle_block.2.in_layers.2", 12),
    ("output_blocks.0.1.proj_out", 13), ("lora_unet_output_blocks_8_0_out_layers_3", 21), ("out.2", 22),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", -1),
])
def test_sdxl_block_numbers_follow_kohya(name, index):
    from engine.methods.blocks import SDXL

    assert block_index(name, SDXL) == index


def test_sdxl_attention_lora_sits_in_its_blocks_and_a_zero_block_has_none(tmp_path, tiny_dataset):
    """The real-size SDXL UNet's attention LoRA lands in IN04 IN05 IN07 IN08, MID1 and
    OUT00-OUT05 (blocks 5 6 8 9, 11, 13-18); on a tiny SDXL run a middle block at weight 0 is
    absent from the file, the others learn, and a list of SD's length is refused."""
    from diffusers import UNet2DConditionModel

    from engine.i18n import Explained
    from engine.methods.blocks import SDXL
    from engine.methods.lora import LoraNetworkConfig
    from engine.models.reference import reference_config_dir
    from engine.models.toy import build_tiny_sdxl
    from engine.networks.lora import unet_file_name, unet_targets

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(reference_config_dir("sdxl") / "unet"))
    blocks = {block_index(unet_file_name(unet, t.name), SDXL) for t in unet_targets(unet, LoraNetworkConfig())}
    assert blocks == {5, 6, 8, 9, 11, *range(13, 19)}, sorted(blocks)

    sdxl = build_tiny_sdxl(tmp_path / "tiny-sdxl", seed=0)
    network = {"dim": 4, "alpha": 2.0, "train_unet_only": True}
    plain = load_file(str(train(parse_config(lora_job(sdxl, tiny_dataset, tmp_path / "plain", network=network,
                                                      training={"epochs": 1, "max_steps": 2}))).final_path))
    blocked = train(parse_config(lora_job(sdxl, tiny_dataset, tmp_path / "o", training={"epochs": 1, "max_steps": 2},
                                          network={**network, "mid_lr_weight": [1.0, 0.0, 1.0]})))
    state = load_file(str(blocked.final_path))
    mids = {k for k in plain if k.startswith("lora_unet_middle_block_1_")}
    assert mids and not mids & set(state) and set(state) == set(plain) - mids
    with safe_open(str(blocked.final_path), "pt") as f:
        assert json.loads(f.metadata()["ss_network_args"])["mid_lr_weight"] == "1,0,1"
    with pytest.raises(Explained) as refused:
        train(parse_config(lora_job(sdxl, tiny_dataset, tmp_path / "x", network={"down_lr_weight": [1.0] * 12})))
    assert refused.value.key == "cfg_block_family"


def test_block_dims_and_alphas_set_each_blocks_rank_in_the_file(tiny_model_dir, tiny_dataset, tmp_path):
    """kohya's block_dims / block_alphas (25 values): each module gets its block's rank and alpha,
    a block at 0 has none; conv_block_dims trains 3x3 convs per block even with conv_dim 0."""
    from engine.methods.blocks import SD

    BLOCKS_PER_SIDE = SD.per_side
    down, mid, up = [2] * BLOCKS_PER_SIDE, 0, [6] * BLOCKS_PER_SIDE
    dims = down + [mid] + up
    alphas = [1.0] * BLOCKS_PER_SIDE + [1.0] + [3.0] * BLOCKS_PER_SIDE
    conv = [0] * BLOCKS_PER_SIDE + [0] + [3] * BLOCKS_PER_SIDE
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "o",
                                network={"dim": 4, "alpha": 2.0, "train_unet_only": True, "block_dims": dims,
                                         "block_alphas": alphas, "conv_block_dims": conv},
                                training={"epochs": 1, "max_steps": 1, "batch_size": 2}))
    result = train(cfg)
    state = load_file(str(result.final_path))
    ranks = {k[:-len(".lora_down.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".lora_down.weight")}
    assert ranks and not any("mid_block" in k for k in ranks)
    for name, rank in ranks.items():
        conv_module = state[f"{name}.lora_down.weight"].dim() == 4 and state[f"{name}.lora_down.weight"].shape[-1] == 3
        idx = block_index(name)
        assert rank == (conv if conv_module else dims)[idx], (name, rank)
        if not conv_module:
            assert state[f"{name}.alpha"].item() == alphas[idx]
    assert any(v.dim() == 4 and v.shape[-1] == 3 for k, v in state.items() if k.endswith("lora_down.weight"))
    assert not any(v.dim() == 4 and v.shape[-1] == 3 for k, v in state.items()
                   if k.endswith("lora_down.weight") and k.startswith("lora_unet_down"))  # conv 0 there
    with safe_open(str(result.final_path), "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
    assert args["block_dims"] == ",".join(map(str, dims)) and args["conv_block_dims"] == ",".join(map(str, conv))
    with pytest.raises(Exception) as err:
        parse_config(lora_job("m", "d", "o", network={"block_alphas": alphas}))
    assert err.value.problems[0]["cause"].key == "cfg_block_alphas_alone"
