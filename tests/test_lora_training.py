"""A real tiny-model LoRA run: kohya keys/shapes/alpha, diffusers accepts it, weights 0/1 behave,
loss goes down, hashes and metadata are right."""
from __future__ import annotations

import hashlib
import json
import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.export.hashes import safetensors_file_data_hash, sha256_file
from engine.networks import lora

# The metadata keys docs/file-formats.md and docs/kohya-metadata.md say our LoRA files carry.
REQUIRED_META = """ss_output_name ss_training_started_at ss_training_finished_at ss_session_id ss_seed
ss_steps ss_epoch ss_num_epochs ss_num_train_images ss_num_reg_images ss_num_batches_per_epoch
ss_learning_rate ss_unet_lr ss_text_encoder_lr ss_lr_scheduler ss_lr_warmup_steps ss_optimizer
ss_network_module ss_network_dim ss_network_alpha ss_network_args ss_mixed_precision
ss_gradient_checkpointing ss_gradient_accumulation_steps ss_base_model_version ss_v2 ss_clip_skip
ss_resolution ss_sd_model_name ss_new_sd_model_hash ss_noise_offset ss_min_snr_gamma ss_tag_frequency
ss_dataset_dirs ss_bucket_info ss_caption_dropout_rate ss_flip_aug ss_shuffle_caption ss_keep_tokens
modelspec.sai_model_spec modelspec.architecture modelspec.title modelspec.resolution modelspec.date
modelspec.prediction_type modelspec.trigger_phrase modelspec.author modelspec.description
sshs_model_hash""".split()


def expected_unet_modules(unet) -> set[str]:
    """Kohya names derived from the target list in docs/file-formats.md, independent of engine.networks.lora."""
    names = set()
    for path, module in unet.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            names |= {f"{path}.proj_in", f"{path}.proj_out"}
        if type(module).__name__ == "BasicTransformerBlock":
            for attn in ("attn1", "attn2"):
                names |= {f"{path}.{attn}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")}
            names |= {f"{path}.ff.net.0.proj", f"{path}.ff.net.2"}
    return {"lora_unet_" + n.replace(".", "_") for n in names}


def expected_te_modules(num_layers: int) -> set[str]:
    parts = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
             "mlp_fc1", "mlp_fc2"]
    return {f"lora_te_text_model_encoder_layers_{i}_{p}" for i in range(num_layers) for p in parts}


def test_files_per_epoch_and_final(trained_lora):
    cfg, result = trained_lora
    names = [p.name for p in result.saved]
    assert names == ["tiny-000001.safetensors", "tiny-000002.safetensors", "tiny.safetensors"]
    assert result.steps == 18 and result.epochs_done == 3


def test_kohya_keys_shapes_and_alpha(trained_lora, tiny_model_dir):
    from diffusers import UNet2DConditionModel

    cfg, result = trained_lora
    state = load_file(str(result.final_path))
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    expected = expected_unet_modules(unet) | expected_te_modules(2)
    modules = {k.split(".")[0] for k in state}
    assert modules == expected
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= state.keys()
        assert state[f"{m}.alpha"].item() == 2.0  # configured alpha, not the rank
        down, up = state[f"{m}.lora_down.weight"], state[f"{m}.lora_up.weight"]
        assert down.shape[0] == 4 and up.shape[1] == 4
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert tuple(state[f"{q}.lora_down.weight"].shape) == (4, 32)
    assert tuple(state[f"{q}.lora_up.weight"].shape) == (32, 4)
    proj_in = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert state[f"{proj_in}.lora_down.weight"].dim() in (2, 4)  # linear or 1x1 conv layout
    assert state["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 2.0
    assert any(state[f"{m}.lora_up.weight"].abs().sum() > 0 for m in modules), "nothing was learned"


def test_metadata_complete_and_strings(trained_lora):
    cfg, result = trained_lora
    with safe_open(str(result.final_path), "pt") as f:
        meta = f.metadata()
    missing = [k for k in REQUIRED_META if k not in meta]
    assert not missing, missing
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_steps"] == "18" and meta["ss_epoch"] == "3" and meta["ss_num_epochs"] == "3"
    assert meta["ss_num_train_images"] == "12" and meta["ss_num_batches_per_epoch"] == "6"
    assert json.loads(meta["ss_tag_frequency"]) == {"3_zkz star": {"zkz star": 4, "purple": 4}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_zkz star": {"n_repeats": 3, "img_count": 4}}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.trigger_phrase"] == "zkz star"
    with safe_open(str(result.saved[0]), "pt") as f:
        assert f.metadata()["ss_epoch"] == "1" and f.metadata()["ss_steps"] == "6"


def test_hashes_are_recomputable(trained_lora):
    _, result = trained_lora
    raw = result.final_path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    with safe_open(str(result.final_path), "pt") as f:
        stored = f.metadata()["sshs_model_hash"]
    assert stored == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert safetensors_file_data_hash(result.final_path) == stored
    assert sha256_file(result.final_path) == hashlib.sha256(raw).hexdigest()


def _unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 700]), ctx


def test_diffusers_loads_it_and_weights_behave(trained_lora, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    from engine.methods.lora import LoraNetworkConfig
    from engine.models.loader import load_sd_components

    _, result = trained_lora
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    x, t, ctx = _unet_inputs(pipe.unet)
    ids = pipe.tokenizer(["zkz star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base_out = pipe.unet(x, t, ctx).sample
        base_te = pipe.text_encoder(ids)[0]
    pipe.load_lora_weights(str(result.final_path), adapter_name="tiny")
    n_file = len({k.split(".")[0] for k in load_file(str(result.final_path))})
    n_loaded = len(lora.lora_layers(pipe.unet, "tiny")) + len(lora.lora_layers(pipe.text_encoder, "tiny"))
    assert n_loaded == n_file, "diffusers dropped some of our LoRA modules"

    with torch.no_grad():
        pipe.set_adapters(["tiny"], adapter_weights=[1.0])
        w1, te1 = pipe.unet(x, t, ctx).sample, pipe.text_encoder(ids)[0]
        pipe.set_adapters(["tiny"], adapter_weights=[0.0])
        w0, te0 = pipe.unet(x, t, ctx).sample, pipe.text_encoder(ids)[0]
    assert torch.equal(w0, base_out) and torch.equal(te0, base_te)
    assert (w1 - base_out).abs().max() > 1e-4 and (te1 - base_te).abs().max() > 1e-4

    # diffusers' reading of the file equals our own in-memory application of it.
    ours = load_sd_components(str(tiny_model_dir))
    net = LoraNetworkConfig(dim=4, alpha=2.0)
    lora.inject_lora(ours.unet, lora.unet_targets(ours.unet, net))
    state = load_file(str(result.final_path))
    assert lora.load_kohya_state_dict(ours.unet, lora.UNET_PREFIX, state) == len(lora.lora_layers(ours.unet))
    with torch.no_grad():
        mine = ours.unet(x, t, ctx).sample
    torch.testing.assert_close(mine, w1, rtol=1e-4, atol=1e-5)


def test_loss_goes_down(trained_lora, tiny_model_dir, tiny_dataset):
    from conftest import denoising_loss

    from engine.models.loader import load_sd_components

    cfg, result = trained_lora
    model = load_sd_components(str(tiny_model_dir))
    before = denoising_loss(model, tiny_dataset)
    lora.inject_lora(model.unet, lora.unet_targets(model.unet, cfg.network))
    lora.inject_lora(model.text_encoder, lora.text_encoder_targets(model.text_encoder, cfg.network))
    state = load_file(str(result.final_path))
    lora.load_kohya_state_dict(model.unet, lora.UNET_PREFIX, state)
    lora.load_kohya_state_dict(model.text_encoder, lora.TE_PREFIX, state)
    after = denoising_loss(model, tiny_dataset)
    assert after < 0.95 * before, (before, after)  # deterministic yardstick: no learning = equal
    # and the logged training loss trends down too
    first, last = result.losses[:6], result.losses[-6:]
    assert sum(last) / 6 < sum(first) / 6


def test_train_on_single_file_base_records_its_hash(tmp_path, tiny_model_dir, tiny_dataset):
    from conftest import lora_job

    from engine.config.job import parse_config
    from engine.models.loader import load_sd_components
    from engine.models.single_file import save_single_file
    from engine.training.loop import train

    m = load_sd_components(str(tiny_model_dir))
    ckpt = save_single_file({"unet": m.unet, "vae": m.vae, "text_encoder": m.text_encoder},
                            tmp_path / "civitai-style.safetensors")
    job = lora_job(ckpt, tiny_dataset, tmp_path / "out", training={"epochs": 1, "max_steps": 1})
    job["model"]["config_dir"] = str(tiny_model_dir)
    result = train(parse_config(job))
    with safe_open(str(result.final_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_sd_model_name"] == "civitai-style.safetensors"
    data = ckpt.read_bytes()
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    assert meta["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]  # A1111's old hash


def documented_keys(section: str) -> set[str]:
    """The keys in the first column of a table of docs/kohya-metadata.md under ``section``."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs" / "kohya-metadata.md").read_text(encoding="utf-8")
    part = text.split(f"## {section}")[1].split("\n## ")[0]
    rows = [line.split("|")[1] for line in part.splitlines() if line.startswith("| `")]
    return {k for row in rows for k in re.findall(r"`([a-z_.*]+)`", row)}


def test_metadata_matches_what_sd_scripts_writes(trained_lora, tiny_model_dir):
    """Our key set against the documented comparison with sd-scripts, and the values of the
    keys that need computing (hashes, total batch size) recomputed here."""
    import re

    from safetensors.torch import save

    _, result = trained_lora
    tensors = load_file(str(result.final_path))
    with safe_open(str(result.final_path), "pt") as f:
        meta = f.metadata()
    written, left_out = documented_keys("Written"), documented_keys("Left out")
    assert len(written) > 60 and len(left_out) > 10  # the tables were found
    for key in written:
        assert any(re.fullmatch(key.replace(".", r"\.").replace("*", ".+"), k) for k in meta), key
    assert not left_out & set(meta)
    unet = (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(unet).hexdigest()  # a diffusers folder's UNet
    assert meta["ss_sd_model_hash"] == hashlib.sha256(unet[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_total_batch_size"] == "2"
    training_only = save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(training_only[0x100000:0x110000]).hexdigest()[:8]
    (n,) = __import__("struct").unpack("<Q", training_only[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(training_only[8 + n:]).hexdigest()
