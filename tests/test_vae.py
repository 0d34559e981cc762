"""A separate VAE (model.vae): the file layouts people download, the errors, and that training,
metadata, the card's samples and the compare grid all use it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from engine.models.loader import ModelLoadError, load_sd_components
from engine.models.reference import reference_config_dir
from engine.models.single_file import VAE_PREFIX, vae_original_state_dict
from engine.models.vae import load_vae
from tests.test_models import _fake_hub_cache


@pytest.fixture(scope="module")
def real_vae():
    """The SD 1.5 VAE architecture (84 M weights) with seeded random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(7)
    return AutoencoderKL.from_config(AutoencoderKL.load_config(reference_config_dir("sd15"), subfolder="vae")).eval()


@pytest.fixture(scope="module")
def vae_files(real_vae, tmp_path_factory) -> dict[str, Path]:
    """The same VAE as people find it: vae-ft-mse-840000 style (original keys, no prefix), cut out
    of a full checkpoint (first_stage_model. prefix), diffusers' layout as one file (the fp16-fix
    VAE's diffusion_pytorch_model.safetensors), and a diffusers folder."""
    root = tmp_path_factory.mktemp("vaes")
    original = {k: v.contiguous() for k, v in vae_original_state_dict(real_vae).items()}
    files = {"original": root / "vae-ft-mse-840000-ema-pruned.safetensors",
             "prefixed": root / "from-checkpoint.vae.safetensors",
             "diffusers_file": root / "sdxl_vae_fp16_fix.safetensors", "folder": root / "my-vae"}
    save_file(original, str(files["original"]))
    save_file({VAE_PREFIX + k: v for k, v in original.items()}, str(files["prefixed"]))
    save_file({k: v.contiguous() for k, v in real_vae.state_dict().items()}, str(files["diffusers_file"]))
    real_vae.save_pretrained(files["folder"], safe_serialization=True)
    return files


def _same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("layout", ["original", "prefixed", "diffusers_file", "folder"])
def test_every_layout_loads_the_same_weights(real_vae, vae_files, layout):
    vae, info = load_vae(str(vae_files[layout]), "sd15", local_files_only=True)
    _same(vae, real_vae)
    assert info.name == vae_files[layout].name
    assert info.weights is not None and info.weights.is_file()


def test_hub_vae_from_the_cache_with_a_base(real_vae, vae_files, tiny_model_dir, tmp_path):
    cache = _fake_hub_cache(tmp_path / "hub", "someorg/sd-vae", vae_files["folder"])
    model = load_sd_components(str(tiny_model_dir), local_files_only=True, cache_dir=cache, vae="someorg/sd-vae")
    _same(model.vae, real_vae)
    assert model.vae_info.name == "someorg/sd-vae" and model.vae_info.weights.is_file()


def test_bad_vae_choices_are_explained(vae_files, tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(tmp_path / "nowhere.safetensors"), "sd15")
    assert err.value.key == "vae_not_found"
    not_vae = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(not_vae))
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(not_vae), "sd15")
    assert err.value.key == "vae_not_vae"
    pickle = tmp_path / "vae.pt"
    torch.save({"state_dict": {}}, pickle)
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(pickle), "sd15")
    assert err.value.key == "vae_pickle"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(tmp_path / "empty"), "sd15")
    assert err.value.key == "vae_folder"
    tiny = tmp_path / "tiny-vae.safetensors"  # a VAE of other layer sizes than the family's
    from diffusers import AutoencoderKL

    small = AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae")
    save_file({k: v.contiguous() for k, v in vae_original_state_dict(small).items()}, str(tiny))
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(tiny), "sd15")
    assert err.value.key == "vae_unusable" and "tiny-vae.safetensors" in str(err.value)


def _job(tiny_model_dir, tiny_dataset, out, vae=None) -> dict:
    from tests.conftest import lora_job

    job = lora_job(tiny_model_dir, tiny_dataset, out, training={"epochs": 1, "batch_size": 2, "seed": 1})
    if vae:
        job["model"]["vae"] = str(vae)
    return job


def test_training_encodes_with_the_chosen_vae_and_records_it(vae_files, real_vae, tiny_model_dir, tiny_dataset,
                                                           tmp_path):
    from accelerate import Accelerator

    from engine.config.job import parse_config
    from engine.export.card import SampleSettings, export_card
    from engine.export.hashes import legacy_hash
    from engine.training.callbacks import Callbacks
    from engine.training.loop import train
    from engine.training.setup import build_training

    vae_file = vae_files["original"]
    cfg = parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path / "with", vae_file))
    setup = build_training(cfg, Accelerator(cpu=True), Callbacks())
    _same(setup.model.vae, real_vae)  # the latents are encoded (and samples decoded) by the chosen VAE
    result = train(cfg)
    with safe_open(str(result.final_path), "pt") as fh:
        meta = fh.metadata()
    from tests.test_lora_training import documented_keys

    assert documented_keys("Written when a separate VAE is chosen") == {"ss_vae_name", "ss_vae_hash",
                                                                        "ss_new_vae_hash"}
    digest = hashlib.sha256(vae_file.read_bytes()).hexdigest()
    assert (meta["ss_vae_name"], meta["ss_new_vae_hash"], meta["ss_vae_hash"]) == (
        vae_file.name, digest, legacy_hash(vae_file))
    plain = train(parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path / "plain")))
    with safe_open(str(plain.final_path), "pt") as fh:
        assert not {"ss_vae_name", "ss_vae_hash", "ss_new_vae_hash"} & set(fh.metadata())
    # the card says which VAE and draws its samples with it: same file, same seed, other VAE
    settings = SampleSettings(prompts=["zkz star"], count=1, steps=3, size=64)
    card = export_card(result.final_path, tmp_path / "card", job=cfg, samples=settings, local_files_only=True)
    readme = card.files["readme"].read_text(encoding="utf-8")
    assert f"| VAE | {vae_file.name} |" in readme
    own = export_card(result.final_path, tmp_path / "card-own-vae",
                      job=cfg.model_copy(update={"model": cfg.model.model_copy(update={"vae": None})}),
                      samples=settings, local_files_only=True)
    with_vae, without = (np.asarray(Image.open(c.files["preview"]), dtype=float) for c in (card, own))
    assert np.abs(with_vae - without).mean() > 5


def test_a_local_vae_is_not_shared_in_a_preset(vae_files, tiny_model_dir, tiny_dataset, tmp_path):
    from engine.config.job import parse_config
    from engine.config.preset_share import preset_settings

    local = parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path, vae_files["original"]))
    assert "vae" not in preset_settings(local).get("model", {})
    hub = parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path, "stabilityai/sd-vae-ft-mse"))
    assert preset_settings(hub)["model"]["vae"] == "stabilityai/sd-vae-ft-mse"


def test_the_compare_grid_draws_with_the_chosen_vae(server, vae_files, tiny_model_dir, trained_lora, tmp_path):
    from gradio_client import Client

    from tests.test_webapp import grid_args

    client = Client(server, verbose=False)
    lora = trained_lora[1].final_path
    cells = {}
    for name, vae in (("own", ""), ("chosen", vae_files["folder"])):
        _, made, message = client.predict(*grid_args(tiny_model_dir, [lora], tmp_path / name, weights="1", vae=vae),
                                          api_name="/make_grid")
        assert message.startswith("saved 1 grid(s) and 1 cells"), message
        image = made[0]["image"]
        cells[name] = np.asarray(Image.open(image if isinstance(image, str) else image["path"]), dtype=float)
    assert np.abs(cells["own"] - cells["chosen"]).mean() > 5
    _, _, message = client.predict(*grid_args(tiny_model_dir, [lora], tmp_path / "bad", vae=tmp_path / "none"),
                                   api_name="/make_grid")
    assert message.startswith("error:") and "VAE file or folder not found" in message


def test_cli_grid_takes_a_vae(vae_files, tiny_model_dir, trained_lora, tmp_path, capsys):
    from launcher import main

    args = ["grid", "--base", str(tiny_model_dir), "--checkpoints", str(trained_lora[1].final_path),
            "--prompt", "zkz star", "--weights", "1", "--size", "64", "--steps", "2", "--offline"]
    assert main([*args, "--vae", str(vae_files["original"]), "--out", str(tmp_path / "ok")]) == 0
    assert len(list((tmp_path / "ok").rglob("*.png"))) >= 1
    assert main([*args, "--vae", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "bad")]) == 2
    assert "VAE file or folder not found" in capsys.readouterr().err
