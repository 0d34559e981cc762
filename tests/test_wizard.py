"""The wizard end to end through gradio_client against the real server on the embedded default:
base model -> dataset upload + trigger word -> settings -> training -> grid + pick -> export."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import tomllib

from conftest import ROOT, draw_shape_images


@pytest.fixture()
def wizard(tmp_path, monkeypatch):
    from gradio_client import Client

    from engine.hardware import HardwareInfo, pick_tier
    from webapp.server import build_app, find_free_port

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    app = build_app(tier=pick_tier(HardwareInfo()))
    port = find_free_port("127.0.0.1", 7950)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False), tmp_path / "out"
    app.close()


def wait_for_job(client, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = client.predict(api_name="/status")
        if not out[0].startswith(("running", "idle")):
            return out
        time.sleep(1)
    raise AssertionError("training did not finish")


def test_steps_arithmetic_and_job_building():
    from webapp.wizard_logic import build_job, steps_text

    assert steps_text(12 * 10, 4, 4) == ("120 images x repeats x 4 epochs / batch 4 = 120 steps "
                                        "(30 per epoch)")
    assert steps_text(10, 3, 4).endswith("= 9 steps (3 per epoch)")
    fields = {"name": "x", "epochs": 3.0, "batch_size": 2.0, "lr": 1e-4, "dim": 16.0, "alpha": 8.0,
              "resolution": 512.0, "trigger": "abc", "sample_prompt": ""}
    job = build_job("some/model", "/data", "lora", "8gb", fields)
    assert job["training"]["epochs"] == 3 and isinstance(job["training"]["epochs"], int)
    assert job["network"] == {"dim": 16, "alpha": 8.0} or job["network"]["dim"] == 16
    assert job["training"].get("gradient_checkpointing") is True  # from the 8gb tier
    assert "sample" not in job
    ti = build_job("embedded", "/data", "textual_inversion", "cpu", fields)
    assert ti["network"]["type"] == "textual_inversion" and ti["network"]["token"] == "abc"
    assert "dim" not in ti["network"]


def test_the_whole_flow_through_the_api(wizard, tmp_path, tiny_model_dir):
    from gradio_client import handle_file

    client, out = wizard
    # 1. base model: scan a models folder, detect the embedded default's type
    found, note = client.predict(str(tiny_model_dir.parent), api_name="/scan_models")
    assert found["value"] == str(tiny_model_dir) and "1 model(s) found" in note
    assert "Stable Diffusion 1.x" in client.predict("embedded", api_name="/detect_base")
    assert client.predict(str(tmp_path / "nope.safetensors"), api_name="/detect_base").startswith(
        "cannot use this model")

    # 2. dataset: upload 4 images, 3 repeats, put the trigger word first in every caption
    pics = draw_shape_images(tmp_path / "pics", 4, caption="a star, purple")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    files = [handle_file(str(p)) for p in [*sorted(pics.glob("*.png")), tmp_path / "notes.pdf"]]
    folder, report, gallery, per_epoch, _ = client.predict(files, "zkz star", 3, api_name="/import_dataset")
    assert Path(folder) == out / "datasets" / "zkz star" and len(gallery) == 4
    assert "1 skipped" in report and "skipped notes.pdf: not an image or caption file" in report, report
    assert per_epoch == 12 and "4 images, 12 per epoch" in report
    assert "4 captions" in client.predict(folder, "zkz", api_name="/add_trigger")
    first = sorted((Path(folder) / "3_zkz star").glob("*.txt"))[0]
    assert first.read_text(encoding="utf-8").startswith("zkz, ")

    # 3. settings -> a checked job; a bad value is refused with the field named
    job_text, verdict = client.predict(
        "embedded", folder, "lora", "cpu", "zkz_lora", "zkz", 64, 2, 4, 2e-3, 4, 2.0, 1, 1,
        "zkz, a star --w 64 --h 64 --s 4", api_name="/build_job")
    job = tomllib.loads(job_text)
    assert verdict.startswith("ready: lora on shapes-base"), verdict
    assert job["training"]["epochs"] == 2 and job["dataset"]["resolution"] == 64
    assert "dataset.resolution" in client.predict(job_text.replace("resolution = 64", "resolution = 65"),
                                                  api_name="/check_job")

    # 4. train (one job at a time), with progress, loss and a sample image per epoch
    assert client.predict(job_text, api_name="/start_training") == "started"
    assert "already running" in client.predict(job_text, api_name="/start_training")
    progress, pct, log, plot, samples, saved = wait_for_job(client)
    assert progress.startswith("done: step 6/6"), (progress, log)
    assert pct == 100 and len(samples) == 2
    epoch1, final = saved.splitlines()
    assert Path(final) == out / "runs" / "zkz_lora.safetensors" and Path(epoch1).is_file()

    # 5. compare: grid of the run's files x weights, click a cell, keep it
    grid_files = client.predict(saved, api_name="/use_run_files")
    grid, cells, message = client.predict(
        "embedded", grid_files, "zkz, a star", "0, 1", 7, 64, 6, 5.0, str(out / "grid"),
        5, 1e-4, False, "", "", api_name="/make_grid")
    assert message.startswith("saved 1 grid(s) and 4 cells"), message
    file, weight, note = client.predict(grid_files, "0, 1", "zkz, a star", 1, api_name="/choose_cell")
    assert (file, weight) == (epoch1, 1.0), note  # cell 1 = first file (epoch 1), second weight
    picked, note = client.predict(epoch1, 0.8, "zkz_best", api_name="/keep_pick")
    assert Path(picked) == out / "picked" / "zkz_best.safetensors", note
    from engine.export.safetensors_io import load_with_metadata
    assert load_with_metadata(Path(picked))[1]["ss_preferred_weight"] == "0.8"

    # 6. export: model card folder with the A1111 sidecar; a preset share code
    message, readme, sidecar = client.predict(picked, str(out / "export"), "A purple star.",
                                              "creativeml-openrail-m", 1, api_name="/export_card")
    assert message.startswith("card written"), message
    side = json.loads(sidecar)
    assert side["activation text"] == "zkz" and side["preferred weight"] == 0.8
    assert "A purple star." in readme and (out / "export" / "zkz_best" / "zkz_best.safetensors").is_file()
    preset, code = client.predict(job_text, "purple star", "me", "demo", api_name="/export_preset")
    assert code.startswith("LFP1.") and "[metadata]" in preset and str(tmp_path) not in preset
    # ... which someone else loads in step 3 with their own base model and dataset
    other = tmp_path / "friend_set"
    shutil.copytree(ROOT / "presets" / "demo" / "zkz_star", other)
    loaded, note = client.predict(code, "embedded", str(other), api_name="/use_preset")
    job = tomllib.loads(loaded)
    sent = tomllib.loads(job_text)
    assert job["dataset"]["path"] == str(other) and job["model"]["base"] == "embedded", note
    assert job["network"] | sent["network"] == job["network"] and job["network"]["dim"] == 4
    assert job["training"]["epochs"] == sent["training"]["epochs"]
    assert client.predict(loaded, api_name="/check_job").startswith("ready: lora on shapes-base"), note
    _, note = client.predict("LFP1.AAAA", "embedded", str(other), api_name="/use_preset")
    assert note.startswith("this preset cannot be used: not a valid preset code"), note


def test_stop_then_resume_in_the_wizard(wizard, tmp_path):
    client, out = wizard
    from webapp.wizard_logic import demo_job
    import tomli_w

    job = demo_job()
    job["output"].update({"dir": str(out / "runs"), "save_state": True, "save_every_n_epochs": 0})
    job["training"].update({"epochs": 1, "batch_size": 4})
    text = tomli_w.dumps(job)
    assert client.predict(text, api_name="/start_training") == "started"
    while client.predict(api_name="/status")[0].startswith(("idle", "running: step 0")):
        time.sleep(0.2)
    client.predict(api_name="/stop_training")
    progress, *_ = wait_for_job(client)
    assert progress.startswith("stopped"), progress
    stopped_at = int(progress.split("step ")[1].split("/")[0])
    assert client.predict(text, api_name="/resume_training").startswith("resuming")
    progress, _, log, *_ = wait_for_job(client)
    assert progress.startswith("done: step 30/30") and f"resumed from" in log, (progress, log)
    assert stopped_at < 30


def test_dataset_tools_through_the_api(wizard, tmp_path):
    """Step 2's tools: a 64 px working copy (the originals stay), then WD14 captions with the
    trigger word first (a tiny real ONNX tagger built offline)."""
    from gradio_client import handle_file
    from PIL import Image

    from captioning_models import build_tiny_wd14

    client, out = wizard
    pics = draw_shape_images(tmp_path / "pics", 3, size=96, caption="x")
    files = [handle_file(str(p)) for p in sorted(pics.glob("*.png"))]
    folder, *_ = client.predict(files, "shape", 2, api_name="/import_dataset")
    copy, note, report, gallery, per_epoch, _ = client.predict(folder, 64, "center", False,
                                                              api_name="/preprocess")
    assert Path(copy) == Path(f"{folder}-64px") and note.startswith("3 images written to"), note
    assert per_epoch == 6 and len(gallery) == 3
    sizes = {Image.open(p).size for p in Path(copy).rglob("*.png")}
    assert sizes == {(64, 64)}
    assert {Image.open(p).size for p in Path(folder).rglob("*.png")} == {(96, 96)}  # untouched
    assert client.predict(copy, 32, "center", False, api_name="/preprocess")[1].startswith(
        "resolution must be a multiple of 64")

    tagger = build_tiny_wd14(tmp_path / "wd14")
    message, *_ = client.predict(copy, "wd14", str(tagger), 0.0, "overwrite", "zkz",
                                 api_name="/auto_caption")
    assert message.startswith("3 captions written"), message
    captions = [p.read_text(encoding="utf-8") for p in sorted(Path(copy).rglob("*.txt"))]
    assert len(captions) == 3 and all(c.startswith("zkz, ") and len(c) > 5 for c in captions)
    assert client.predict(copy, "blip", str(tmp_path / "missing"), 0.3, "skip", "",
                          api_name="/auto_caption")[0].startswith("error")
