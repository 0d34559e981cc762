"""The web app over the engine, driven through gradio_client against a real running server."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import lora_job


def test_train_through_the_api(server, tmp_path, tiny_model_dir, tiny_dataset):
    from gradio_client import Client
    from wizard_client import Wizard

    wizard = Wizard(Client(server, verbose=False))
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out", training={"epochs": 2, "batch_size": 4})
    wizard.set_job({**job, "dataset": {**job["dataset"], "resolution": 65}})
    assert "dataset.resolution" in wizard.check()
    wizard.set_job(job)
    started = wizard.start()
    assert started.startswith("started, writing to "), started
    run = Path(started.split("writing to ")[1])
    assert run.parent == tmp_path / "out" and run.name.startswith("tiny-")  # its own folder
    assert "already running" in wizard.start()
    message, _, progress, log, _, _, files = wizard.wait(300)
    assert progress.startswith("done") and "step 6/6" in progress, (progress, log)
    assert message == f"done: {run / 'tiny.safetensors'}"
    assert files.splitlines() == [str(run / "tiny-000001.safetensors"), str(run / "tiny.safetensors")]


def test_default_job_is_the_embedded_demo_and_trains(server, tmp_path):
    import tomllib

    from conftest import ROOT
    from gradio_client import Client
    from wizard_client import Wizard

    client = Client(server, verbose=False)
    job = tomllib.loads(client.predict(api_name="/default_job"))
    assert job["model"]["base"] == "embedded"
    assert job["dataset"]["path"] == str(ROOT / "presets" / "demo" / "zkz_star")
    job["output"]["dir"] = str(tmp_path)
    job["training"]["max_steps"] = 2
    wizard = Wizard(client)
    wizard.set_job(job)
    assert wizard.start().startswith("started")
    _, _, progress, log, _, _, files = wizard.wait(300)
    assert progress.startswith("done") and "shapes-base" in log, (progress, log)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert files.splitlines() == [str(run / "zkz_star.safetensors")]
    # the demo's prior preservation: the base drew its 12 captions without "zkz", in the run's folder
    assert "the base drew 36 prior-preservation images" in log, log  # 12 captions + 24 prompts to keep
    assert len(list((run / "prior_images" / "1_prior").glob("prior_*.png"))) == 36


def test_listen_requires_auth():
    from webapp.server import parse_auth, serve

    assert serve(listen=True, auth=None, open_browser=False) == 2
    assert parse_auth("me:pw") == ("me", "pw")
    with pytest.raises(ValueError):
        parse_auth("nopassword")


def grid_args(base, files, out_dir, weights="0, 1", prompt="zkz star, purple", vae="", **aesthetic):
    """Arguments of /make_grid in the order of the compare tab's inputs."""
    a = {"steps": 5, "lr": 1e-4, "slerp": False, "text": "", "clip": "", "per_cell": 1, "control": "",
         "refs": ""} | aesthetic
    return (str(base), "\n".join(str(f) for f in files), prompt, weights, 42, 64, 3, 5.0, str(out_dir),
            a["steps"], a["lr"], a["slerp"], a["text"], a["clip"], str(vae), a["per_cell"], a["control"],
            a["refs"])


def test_compare_grid_through_the_api(server, tmp_path, tiny_model_dir, trained_lora, tiny_dataset):
    from gradio_client import Client
    from PIL import Image

    lora = trained_lora[1].final_path
    client = Client(server, verbose=False)
    grid, cells, message = client.predict(*grid_args(tiny_model_dir, [lora], tmp_path),
                                          api_name="/make_grid")
    assert message.startswith("saved 1 grid(s) and 2 cells"), message
    assert len(cells) == 2
    from engine.generate.grid import checkpoint_label

    row = checkpoint_label(lora)  # "epoch 3"
    assert [c["caption"] for c in cells] == [f"{row} · weight 0", f"{row} · weight 1"]  # labelled
    sheet = Image.open(grid)
    assert sheet.width > 2 * 64 and sheet.height > 64
    saved = sorted(tmp_path.glob("*/cells/*.png"))
    assert len(saved) == 2 and "<lora:" in Image.open(saved[1]).text["parameters"]
    # bad input comes back as a message, not a crash
    _, _, message = client.predict(*grid_args(tiny_model_dir, [tmp_path / "missing.safetensors"], tmp_path),
                                   api_name="/make_grid")
    assert message.startswith("error: file not found")
    _, _, message = client.predict(*grid_args(tiny_model_dir, [lora], tmp_path, weights="a, b"),
                                   api_name="/make_grid")
    assert "weights must be numbers" in message
    # several seeds a cell, and the per-file figures: likeness to the training images, bleed into
    # a prompt without the trigger (its own grid, not in the gallery)
    grid, cells, message = client.predict(*grid_args(tiny_model_dir, [lora], tmp_path, per_cell=2,
                                                     control="a red circle", refs=str(tiny_dataset)),
                                          api_name="/make_grid")
    assert message.startswith("saved 2 grid(s) and 2 cells"), message
    assert "likeness" in message and "bleed" in message and "<- best" in message, message
    assert Image.open(cells[1]["image"]).size == (128, 64)


def test_a_base_of_another_family_takes_its_resolution_and_its_tier(tiny_model_dir, tiny_flux_dir):
    """Step 1 on a 12 GB card: the demo's 64 px never reaches a real base; leaving it for Flux.1
    gives Flux's table of the tier (NF4 base at 512 px, its rank); moving on to an SD 1.5 base
    takes back what only Flux's table set (an SD job with a quantized base would be refused) and
    gives SD 1.5's 512 px; a base of the same family keeps what the user changed."""
    from engine.config.job import parse_config
    from engine.i18n import EN
    from webapp.job_view import JobView
    from webapp.wizard_logic import wizard_job

    view = JobView(EN, None, "12gb")
    demo = wizard_job()
    assert demo["dataset"]["resolution"] == 64
    flux = view.set_base(demo, str(tiny_flux_dir))
    assert flux["dataset"]["resolution"] == 512 and flux["training"]["quantize_base"] == "nf4"
    assert flux["network"]["dim"] == 16 and flux["optimizer"]["type"] == "AdamW8bit"
    sd = view.set_base(flux, str(tiny_model_dir))
    cfg = parse_config(sd)
    assert cfg.training.quantize_base == "none" and cfg.dataset.resolution == 512 and cfg.network.dim == 32
    assert cfg.optimizer.type == "AdamW" and cfg.training.batch_size == 2  # the 12gb tier's SD settings
    mine = {**sd, "dataset": {**sd["dataset"], "resolution": 768}}
    other_sd = view.set_base(mine, str(tiny_model_dir) + "/")  # another path, the same family
    assert other_sd["dataset"]["resolution"] == 768
    on_24 = JobView(EN, None, "24gb+").set_base(demo, str(tiny_flux_dir))  # Flux's own 1024 px, int8
    assert on_24["dataset"]["resolution"] == 1024 and on_24["training"]["quantize_base"] == "int8"
    on_cpu = JobView(EN, None, "cpu").set_base(demo, str(tiny_flux_dir))  # the cpu tier's 256 px
    assert on_cpu["dataset"]["resolution"] == 256 and "quantize_base" not in on_cpu.get("training", {})


def test_a_flux_file_in_comfyuis_models_folder_brings_its_encoders_and_vae(tmp_path, tiny_model_dir):
    """Step 1 pointed at models/unet/flux1-dev.safetensors of a ComfyUI install: the job names the
    CLIP-L, the T5-XXL closest to the original weights (fp16 over fp8) and ae.safetensors of that
    install; moving to an SD base drops them (an SD job with Flux's files would be refused)."""
    import torch
    from safetensors.torch import save_file
    from test_flux import _original_layout

    from engine.i18n import EN
    from engine.models.toy import tiny_flux_components
    from webapp.job_view import JobView
    from webapp.wizard_logic import wizard_job

    models = tmp_path / "ComfyUI" / "models"
    for sub in ("unet", "clip", "vae"):
        (models / sub).mkdir(parents=True)
    transformer = tiny_flux_components(0)["transformer"]
    save_file(_original_layout(transformer), models / "unet" / "flux1-dev.safetensors")
    for name in ("clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp16.safetensors"):
        save_file({"x": torch.zeros(1)}, models / "clip" / name)
    save_file({"x": torch.zeros(1)}, models / "vae" / "ae.safetensors")
    save_file({"x": torch.zeros(1)}, models / "vae" / "sdxl_vae.safetensors")
    view = JobView(EN, None, "cpu")
    job = view.set_base(wizard_job(), str(models / "unet" / "flux1-dev.safetensors"))
    assert job["model"]["clip_l"] == str(models / "clip" / "clip_l.safetensors")
    assert job["model"]["t5xxl"] == str(models / "clip" / "t5xxl_fp16.safetensors")
    assert job["model"]["vae"] == str(models / "vae" / "ae.safetensors")
    sd = view.set_base(job, str(tiny_model_dir))
    assert not {"clip_l", "t5xxl", "vae"} & set(sd["model"])
    # an exposed server whose workspace holds only models/unet names no file outside it
    from webapp.security import Workspace

    exposed = JobView(EN, Workspace([(models / "unet").resolve()], exposed=True), "cpu")
    job = exposed.set_base(wizard_job(), str(models / "unet" / "flux1-dev.safetensors"))
    assert not {"clip_l", "t5xxl", "vae"} & set(job["model"]), job["model"]
