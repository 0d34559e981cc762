"""Tiny-model tests for engine.models: tokenizer, toy factory, single-file export, loader (CPU, offline)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.models import clip_tokenizer
from engine.models.loader import (
    ModelLoadError,
    detect_family_from_folder,
    detect_family_from_keys,
    load_sd_components,
    resolve_source,
)
from engine.models.single_file import save_single_file, to_original_state_dict
from engine.models.toy import build_tiny_sd2, build_tiny_sd15, build_tiny_sdxl, tiny_sd15_components


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the tokenizer cache out of the user's home directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAFORGE_CACHE", str(tmp_path_factory.mktemp("lf_cache")))
        yield


@pytest.fixture(scope="session")
def sd15(tmp_path_factory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def sd15_file(sd15, tmp_path_factory) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd15)
    return save_single_file(pipe, tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype == torch.float32, key
        assert torch.equal(sa[key], sb[key]), key


# --- tokenizer ---------------------------------------------------------------------------------------------

def test_clip_tokenizer_matches_openai_ids():
    tok = clip_tokenizer.load_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>"
    padded = tok("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert clip_tokenizer.load_clip_tokenizer() is not tok  # fresh object: TI adds tokens to it


def test_tokenizer_files_follow_openai_order(tmp_path):
    out = clip_tokenizer.write_clip_tokenizer_files(tmp_path / "tok")
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["".join(merges[1].split())] == 512  # first merge follows the 512 byte tokens


def test_missing_open_clip_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(clip_tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps open_clip_torch"):
        clip_tokenizer.bpe_source_path()


# --- toy models --------------------------------------------------------------------------------------------

def test_tiny_components_run_and_are_seeded():
    a, b = tiny_sd15_components(seed=3), tiny_sd15_components(seed=3)
    _assert_same_weights(a["unet"], b["unet"])
    assert a["text_encoder"].config.hidden_act == "quick_gelu"
    assert a["scheduler"].config.beta_schedule == "scaled_linear"
    ids = a["tokenizer"]("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = a["text_encoder"](ids).last_hidden_state
        latents = a["vae"].encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        out = a["unet"](latents, 10, encoder_hidden_states=hidden).sample
    assert hidden.shape == (1, 77, 32) and latents.shape == (1, 4, 32, 32) and out.shape == latents.shape


# --- single file -------------------------------------------------------------------------------------------

def test_single_file_uses_original_key_layout(sd15_file):
    from safetensors import safe_open

    with safe_open(str(sd15_file), "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight").ndim == 4  # 1x1 conv
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key
    assert detect_family_from_keys(keys) == "sd15"


@pytest.mark.parametrize("kwargs", [{}, {"unet_channels": (32, 64, 64), "layers_per_block": 2}])
def test_single_file_roundtrip_is_exact(tmp_path, kwargs):
    from diffusers import StableDiffusionPipeline

    folder = build_tiny_sd15(tmp_path / "m", **kwargs)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    path = save_single_file(pipe, tmp_path / "m.safetensors")
    back = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(back, name))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_single_file_half_and_sd2(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open
    from transformers import CLIPTextModelWithProjection

    parts = tiny_sd15_components()
    path = save_single_file(parts, tmp_path / "half.safetensors", half=True)
    with safe_open(str(path), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16, torch.int64}  # + token positions
        assert len(list(fh.keys())) == len(to_original_state_dict(parts["unet"], parts["vae"], parts["text_encoder"]))
    # SD 2.x: the OpenCLIP encoder under cond_stage_model.model., and back through diffusers' loader
    folder = build_tiny_sd2(tmp_path / "sd2")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    path = save_single_file(pipe, tmp_path / "sd2.safetensors")
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    assert detect_family_from_keys(keys) == "sd2"
    back = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(back, name))
    projected = CLIPTextModelWithProjection(pipe.text_encoder.config)
    with pytest.raises(ValueError, match="no original single-file layout"):
        to_original_state_dict(parts["unet"], parts["vae"], projected)


# --- loader ------------------------------------------------------------------------------------------------

def test_load_diffusers_folder(sd15):
    m = load_sd_components(str(sd15), local_files_only=True)
    assert (m.family, m.prediction_type, m.source_kind, m.name) == ("sd15", "epsilon", "diffusers", "tiny-sd15")
    assert type(m.noise_scheduler).__name__ == "DDPMScheduler"
    assert m.noise_scheduler.config.num_train_timesteps == 1000
    assert m.tokenizer("a photo of a cat").input_ids[1] == 320


def test_load_single_file_with_config(sd15, sd15_file):
    m = load_sd_components(str(sd15_file), local_files_only=True, single_file_config=sd15)
    assert (m.family, m.source_kind, m.name) == ("sd15", "single_file", "tiny-sd15.safetensors")
    ref = load_sd_components(str(sd15), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(ref, name), getattr(m, name))


def test_single_file_of_other_layer_sizes_is_explained(sd15_file, tmp_path, monkeypatch):
    """With no config, a single file is read as the reference architecture of its family; a file
    with other layer sizes (here the tiny model) says so instead of a shape traceback."""
    monkeypatch.setenv("LORAFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="do not have the SD 1.5 architecture.*model.config_dir") as err:
        load_sd_components(str(sd15_file), local_files_only=True, cache_dir=tmp_path / "empty_cache")
    assert err.value.key == "single_file_shape"


def _fake_hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_id_loads_offline_from_cache(sd15, tmp_path):
    cache = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-sd15", sd15)
    m = load_sd_components("someorg/tiny-sd15", local_files_only=True, cache_dir=cache)
    assert (m.source_kind, m.name, m.family) == ("hub", "someorg/tiny-sd15", "sd15")


def test_missing_hub_id_offline_message(tmp_path):
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*offline"):
        resolve_source("nobody/no-such-model", local_files_only=True, cache_dir=tmp_path)


def test_family_detection_folders(sd15, tmp_path):
    assert detect_family_from_folder(sd15) == "sd15"
    assert detect_family_from_folder(build_tiny_sd2(tmp_path / "sd2")) == "sd2"
    assert detect_family_from_folder(build_tiny_sdxl(tmp_path / "sdxl")) == "sdxl"
    m = load_sd_components(str(tmp_path / "sd2"), local_files_only=True)
    assert (m.family, m.prediction_type) == ("sd2", "v_prediction")
    xl = load_sd_components(str(tmp_path / "sdxl"), local_files_only=True)
    assert xl.spec.pooled_text and type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.tokenizer_2.pad_token == "!" and len(xl.text_encoders) == 2
    with pytest.raises(ModelLoadError, match="is an SDXL model but the job is set to SD 1.5"):
        load_sd_components(str(tmp_path / "sdxl"), family="sd15")


def test_family_detection_keys():
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert detect_family_from_keys([unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight"]) == "sd15"
    assert detect_family_from_keys([unet, "cond_stage_model.model.token_embedding.weight"]) == "sd2"
    assert detect_family_from_keys([unet, "conditioner.embedders.0.transformer.text_model.x",
                                    "conditioner.embedders.1.model.positional_embedding"]) == "sdxl"
    with pytest.raises(ModelLoadError, match="LoRA"):
        detect_family_from_keys(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])
    with pytest.raises(ModelLoadError, match="Not a Stable Diffusion checkpoint"):
        detect_family_from_keys(["foo.weight"])


def test_family_mismatch_for_single_file(sd15, sd15_file):
    with pytest.raises(ModelLoadError, match="is an SD 1.5 model but the job is set to SDXL"):
        load_sd_components(str(sd15_file), family="sdxl", single_file_config=sd15)


def test_paths_pickles_and_missing_files(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickles can run arbitrary code.*safetensors"):
        resolve_source(str(ckpt))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_source(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_source("nope.safetensors")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_source(str(tmp_path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a readable"):
        resolve_source(str(bad))


def test_diffusers_folder_with_only_pickled_weights_is_refused(sd15, tmp_path):
    from safetensors.torch import load_file

    folder = Path(shutil.copytree(sd15, tmp_path / "pickled"))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors"):
        load_sd_components(str(folder), local_files_only=True)


class _RunsCode:
    """A pickle payload that would create a file if it were ever unpickled unsafely."""
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_only_with_opt_in_and_only_tensors(sd15, sd15_file, tmp_path):
    """A .ckpt base model is refused by default; with allow_pickle its tensors are read with
    weights_only=True into a cached .safetensors copy and load exactly like the original; a
    pickle that carries code is refused even then, and its code never runs."""
    from safetensors.torch import load_file

    tensors = load_file(sd15_file)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tensors, "global_step": 1234, "epoch": 3}, ckpt)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_sd_components(str(ckpt), local_files_only=True, single_file_config=sd15)
    m = load_sd_components(str(ckpt), local_files_only=True, single_file_config=sd15, allow_pickle=True)
    ref = load_sd_components(str(sd15_file), local_files_only=True, single_file_config=sd15)
    assert (m.family, m.source_kind, m.name) == ("sd15", "single_file", "tiny.ckpt")
    for a, b in ((m.unet, ref.unet), (m.vae, ref.vae), (m.text_encoder, ref.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert m.path.suffix == ".safetensors" and m.path.parent.name == "converted"

    evil = _RunsCode()
    evil.marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": evil}, bad)
    with pytest.raises(ModelLoadError, match="more than tensors.*refused even with allow_pickle"):
        load_sd_components(str(bad), local_files_only=True, single_file_config=sd15, allow_pickle=True)
    assert not evil.marker.exists()


def test_allow_pickle_is_never_shared_in_a_preset(sd15, tmp_path):
    from engine.config.job import parse_config
    from engine.config.preset_share import PresetError, export_preset, parse_preset

    cfg = parse_config({"model": {"base": "some/model", "allow_pickle": True},
                        "dataset": {"path": str(tmp_path)}, "training": {"epochs": 7}})
    text = export_preset(cfg, "mine")
    assert "allow_pickle" not in text and "epochs = 7" in text
    with pytest.raises(PresetError, match="model.allow_pickle: a safety setting"):
        parse_preset(text.replace("[model]\n", "[model]\nallow_pickle = true\n"))
