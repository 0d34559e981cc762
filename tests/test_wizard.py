"""The wizard as a newcomer uses it, through gradio_client against the real server: their own
uploaded images (some broken), fields changed without any extra button, Stop then Resume, a
second run, a page reload, then compare, pick and export. Each numbered test is one way the
wizard used to give a wrong or lost result."""
from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, draw_shape_images
from PIL import Image
from safetensors import safe_open
from wizard_client import Wizard


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """Both languages on one server, as `launcher.py` serves them; output under tmp_path/out."""
    from engine.system.hardware import HardwareInfo, pick_tier
    from webapp.server import build_server, find_free_port, run_server

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    port = find_free_port("127.0.0.1", 7950)
    srv = run_server(build_server(tier=pick_tier(HardwareInfo())), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/en/", tmp_path / "out"
    srv.should_exit = True


def page(server) -> Wizard:
    """A freshly opened (or reloaded) page: a new session."""
    from gradio_client import Client

    return Wizard(Client(server[0], verbose=False))


def upload(wizard: Wizard, files: list[Path], concept: str, repeats: int):
    from gradio_client import handle_file

    report, gallery, _, *views = wizard([handle_file(str(p)) for p in files], concept, repeats,
                                        api_name="/import_dataset")
    return views[1], report, gallery, views  # (the job's new dataset folder, ...)


def wait_for_step(wizard: Wizard, step: int, timeout: float = 120) -> None:
    import re
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"step (\d+)/", wizard.status()[2])
        if m and int(m.group(1)) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached")


def as_read(markdown: str) -> str:
    """A Markdown view as the reader sees it (escapes such as my\\_green removed)."""
    import re

    return re.sub(r"\\(.)", r"\1", markdown)


def metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def my_photos(folder: Path, n: int = 4) -> list[Path]:
    """A user's own pictures (not the demo): green discs, 64 px, captions beside."""
    draw_shape_images(folder, n, colour=(30, 160, 60), caption="a green disc")
    return sorted(folder.glob("*"))


# ---------------------------------------------------------------- 1 + 8: one job state

def test_1_start_trains_the_page_not_a_stale_job(server, tmp_path, tiny_model_dir):
    """Import their own 4 images, rename the output, change epochs and the base model, press
    Start: no Build button, the summary and the trained file say exactly that."""
    wizard = page(server)
    folder, report, gallery, _ = upload(wizard, my_photos(tmp_path / "mine"), "green", 2)
    assert "4 images used for training, 8 per epoch" in report and len(gallery) == 4, report
    wizard.set("output.name", "my_green")
    wizard.set("training.epochs", 2)
    summary = as_read(wizard.set("training.batch_size", 2)[-1])  # every edit re-renders the summary
    for line in (f"Dataset: {folder}: 4 images, 8 per epoch", "Steps: 8 (2 epochs x 4 per epoch)",
                  "Base model: shapes-base", "Method: LoRA", "runs/my_green-YYYYMMDD-HHMMSS"):
        assert line in summary, (line, summary)
    assert wizard.check().startswith("Ready to train.")
    started = wizard.start()
    run = Path(started.split("writing to ")[1])
    message, *_, files = wizard.wait(300)
    final = run / "my_green.safetensors"
    assert message == f"done: {final}" and files.splitlines()[-1] == str(final), message
    meta = metadata(final)
    assert meta["ss_output_name"] == "my_green" and meta["ss_num_train_images"] == "8"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_green": {"n_repeats": 2, "img_count": 4}}
    assert meta["ss_sd_model_name"] == "shapes-base" and meta["ss_num_epochs"] == "2"
    assert "purple star" not in meta.get("modelspec.description", "")  # the demo's words left with its images


def test_1_a_flux_base_trains_a_flux_lora(server, tmp_path, tiny_flux_dir):
    """A newcomer points step 1 at a Flux.1 folder, uploads their own images and presses Start
    with the page's defaults (a LoCon-style conv rank among them): a Flux LoRA in kohya's Flux
    layout comes out, and the log says what a Flux run does differently."""
    wizard = page(server)
    views = wizard(str(tiny_flux_dir), api_name="/set_base")
    assert "Base model: tiny-flux (Flux.1)" in as_read(views[-1]), as_read(views[-1])
    # leaving the demo model, the page takes Flux.1's own resolution (1024 px) under this
    # machine's tier (a CPU: the cpu tier's 256 px), not the demo's 64 px
    assert tomllib.loads(views[-4])["dataset"]["resolution"] == 256
    upload(wizard, my_photos(tmp_path / "mine"), "green", 2)
    wizard.set("dataset.resolution", 64)  # (a tiny model on a CPU: the user lowers it)
    wizard.set("output.name", "my_flux")
    wizard.set("output.trigger_phrase", "green")  # their captions say "a green disc"
    wizard.set("training.epochs", 1)
    wizard.set("training.batch_size", 2)
    assert wizard.check().startswith("Ready to train."), wizard.check()
    run = Path(wizard.start().split("writing to ")[1])
    out = wizard.wait(300)
    message, log = out[0], out[3]
    final = run / "my_flux.safetensors"
    assert message == f"done: {final}", message
    assert "text encoders (CLIP-L, T5) stay frozen" in log and "no convolutions" in log, log
    assert "prior-preservation images" in log, log  # the base drew them through FluxPipeline
    meta = metadata(final)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_network_module"] == "networks.lora_flux"
    assert "conv_dim" not in json.loads(meta["ss_network_args"])  # the page's conv rank trained nothing
    with safe_open(str(final), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_double_blocks_") or k.startswith("lora_unet_single_blocks_")
                        for k in keys), keys[:5]


def test_1_every_view_edits_the_same_job(server, tmp_path, tiny_model_dir):
    """The base from step 1, the expert TOML and the fields stay in one job: an edit in one
    shows in the others, and what only the TOML can say survives field edits (8)."""
    wizard = page(server)
    views = wizard(str(tiny_model_dir), api_name="/set_base")
    assert "Base model: tiny-sd15" in as_read(views[-1])
    job = tomllib.loads(views[-4])
    assert job["model"]["base"] == str(tiny_model_dir) and "local_files_only" not in job["model"]
    job["network"].update({"conv_dim": 4, "conv_alpha": 2.0, "dropout": 0.1})
    job["optimizer"]["type"] = "Lion"
    job["training"]["max_steps"] = 7
    views = wizard.set_job(job)
    assert "training.max_steps = 7" in views[-3] and "network.dropout = 0.1" in views[-3]  # "set in expert view"
    views = wizard.set("training.epochs", 3)  # a field edit keeps every expert edit
    kept = tomllib.loads(views[-4])
    assert kept["network"]["conv_dim"] == 4 and kept["network"]["dropout"] == 0.1
    assert kept["optimizer"]["type"] == "Lion" and kept["training"] == {**job["training"], "epochs": 3}
    assert kept["output"]["save_precision"] == job["output"]["save_precision"]
    # the prior-preservation switch is a field like the others (the demo ships with it on)
    views = wizard.set("dataset.prior_preservation", False)
    assert tomllib.loads(views[-4])["dataset"]["prior_preservation"] is False
    # the method decides which fields there are: Textual Inversion has a token, no dim
    views = wizard("textual_inversion", api_name="/set_method")
    ti = tomllib.loads(views[-4])
    assert ti["network"] == {"type": "textual_inversion", "token": "zkz"}, ti["network"]


def test_9_the_wizards_demo_is_the_demo_file_value_for_value(server):
    from webapp.wizard_logic import demo_job

    wizard = page(server)
    shown = tomllib.loads(wizard.job_toml())
    expected = demo_job()
    for section in expected:
        if isinstance(expected[section], dict):
            mine = {k: v for k, v in expected[section].items() if k != "dir"}
            assert {k: shown[section][k] for k in mine} == mine, section
    assert shown["network"]["conv_dim"] == 8 and shown["output"]["save_state"] is True


# ---------------------------------------------------------------- 2: captions

def test_2_save_caption_never_wipes_a_caption(server, tmp_path):
    import urllib.request

    wizard = page(server)
    with urllib.request.urlopen(server[0] + "config") as resp:
        config = json.loads(resp.read())
    props = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in config["components"]}
    first = props["caption-image"]["value"]
    assert props["caption-text"]["value"] == Path(first).with_suffix(".txt").read_text(encoding="utf-8")
    folder, *_ = upload(wizard, my_photos(tmp_path / "mine", 2), "green", 1)
    image = str(Path(folder) / "1_green" / "img_0.png")
    assert wizard(image, api_name="/load_caption")[0] == "a green disc"
    said = wizard(image, "", False, api_name="/save_caption")
    assert said.startswith("not saved") and Path(image).with_suffix(".txt").read_text(encoding="utf-8") == "a green disc"
    assert wizard(image, "", True, api_name="/save_caption").startswith("saved")
    assert Path(image).with_suffix(".txt").read_text(encoding="utf-8") == ""


# ---------------------------------------------------------------- 3 + 5 + 6: runs, stop, resume, reload

def test_3_5_6_stop_resume_a_second_run_and_a_reload(server, tmp_path):
    wizard = page(server)
    wizard.set("dataset.prior_preservation", False)  # the steps below count the demo's images only
    wizard.set("training.epochs", 2)
    wizard.set("sample.every_n_epochs", 0)
    first = Path(wizard.start().split("writing to ")[1])
    wait_for_step(wizard, 1)
    wizard(api_name="/stop_training")
    message, _, progress, _, _, _, saved = wizard.wait(300)
    step = int(progress.split("step ")[1].split("/")[0])
    stopped = first / f"zkz_star-stopped-step{step:06d}.safetensors"
    assert message.startswith(f"stopped at step {step}") and saved.splitlines()[-1] == str(stopped), message
    assert not (first / "zkz_star.safetensors").exists()  # a stopped run is never "the result"
    # Resume continues that run: same folder, the losses before the stop kept
    assert wizard(api_name="/resume_training").startswith(f"resuming {first} from step {step}")
    message, _, progress, log, frame, _, saved = wizard.wait(300)
    assert message == f"done: {first / 'zkz_star.safetensors'}" and "resumed from" in log, (message, log)
    rows = (first / "zkz_star_loss.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 61))  # one loss curve across the stop
    assert str(stopped) in saved.splitlines()  # the stopped file stays listed and on disk
    digest = hashlib.sha256((first / "zkz_star.safetensors").read_bytes()).hexdigest()
    # a second run of the same job gets its own folder; the first run's files are untouched.
    # Check job now knows this machine's speed for this kind of job
    wizard.set("training.epochs", 1)
    checked = wizard.check()
    assert "minutes on this machine for 30 steps" in checked
    assert "GPU memory at the peak (predicted):" in checked and "no GPU on this machine" in checked, checked
    second = Path(wizard.start().split("writing to ")[1])
    wizard.wait(300)
    assert second != first and (second / "zkz_star.safetensors").is_file()
    assert hashlib.sha256((first / "zkz_star.safetensors").read_bytes()).hexdigest() == digest
    # 6: after a reload the runs are read from disk; the newest is used
    reloaded = page(server)
    files, base, vae, prompt, size, steps, cfg, control, refs, note = reloaded(str(second), api_name="/use_run_files")
    assert files.splitlines() == [str(second / "zkz_star.safetensors")] and base == "embedded", note
    assert vae == ""  # the run used the base's own VAE
    assert (prompt, size, steps, cfg) == ("zkz, a star on a white background", 64, 12, 5.0)  # the run's sampling
    # the grid's likeness and bleed figures: the run's training images, its prompt without the trigger
    assert control == "a star on a white background" and Path(refs).is_dir(), (control, refs)
    files, *_ = reloaded(str(first), api_name="/use_run_files")
    assert files.splitlines() == [str(first / "zkz_star-000001.safetensors"), str(first / "zkz_star.safetensors")]


def test_3_a_resume_that_cannot_work_says_why_and_keeps_the_view(server, tmp_path):
    wizard = page(server)
    wizard.set("dataset.prior_preservation", False)  # the steps below count the demo's images only
    wizard.set("training.epochs", 1)
    wizard.start()
    wizard.wait(300)
    assert wizard(api_name="/resume_training") == ("there is no stopped run to resume (a run can be resumed "
                                                   "after Stop or a crash)")
    # a damaged state: named, no traceback, the finished run's view stays
    wizard.set("training.epochs", 4)
    run = Path(wizard.start().split("writing to ")[1])
    wait_for_step(wizard, 31)  # past the first epoch's state
    wizard(api_name="/stop_training")
    view = wizard.wait(300)
    for state in (run / "zkz_star-state").glob("step-*"):
        (state / "meta.json").write_text("{broken", encoding="utf-8")
    said = wizard(api_name="/resume_training")
    assert said.startswith("cannot resume: no usable training state in") and "damaged" in said, said
    after = wizard.status()
    assert after[6] == view[6] and after[2] == view[2]


# ---------------------------------------------------------------- 4: broken images

def test_4_broken_images_are_listed_and_left_out_before_training(server, tmp_path):
    mine = tmp_path / "mixed"
    good = my_photos(mine, 4)
    (mine / "truncated.png").write_bytes(good[0].read_bytes()[:200])
    (mine / "notes.png").write_text("not an image", encoding="utf-8")
    Image.new("RGB", (16, 16), "red").save(mine / "tiny.png")
    shutil.copy(mine / "img_1.png", mine / "img_1_copy.png")
    draw_shape_images(tmp_path / "more", 6, colour=(200, 40, 40))
    Image.open(tmp_path / "more" / "img_4.png").convert("RGBA").save(mine / "rgba.png")
    Image.open(tmp_path / "more" / "img_5.png").convert("CMYK").save(mine / "cmyk.jpg")
    wizard = page(server)
    folder, report, gallery, _ = upload(wizard, sorted(mine.iterdir()), "mixed", 1)
    for line in ("left out img_1_copy.png: the same file as img_1.png", "left out notes.png: not a readable image",
                 "left out truncated.png: damaged or cut-off image file",
                 "fixed rgba.png: transparent parts put on a white background",
                 "fixed cmyk.jpg: colour mode CMYK converted to RGB",
                 "worth a look tiny.png: smaller than the training size (16x16 < 64)"):
        assert line in report, (line, report)
    assert "7 images used for training" in report  # 4 + rgba + cmyk + tiny; nothing deleted
    assert len(list((Path(folder) / "1_mixed").glob("*.png"))) == 9  # all imported, nothing deleted
    assert "Dataset: " in as_read(wizard.set("training.epochs", 1)[-1]) and "7 images, 7 per epoch" in wizard.check()
    run = Path(wizard.start().split("writing to ")[1])
    message, *_, log, _, _, saved = wizard.wait(300)
    assert message.startswith("done"), (message, log)
    assert "left out" in log and metadata(run / "zkz_star.safetensors")["ss_num_train_images"] == "7"


# ---------------------------------------------------------------- 7: export

def test_7_export_makes_samples_with_the_runs_base_and_settings(server, tmp_path):
    """... and its VAE: one chosen in Advanced encodes, is recorded, and draws the card's samples."""
    from diffusers import AutoencoderKL

    from engine.models.reference import reference_config_dir

    vae_folder = tmp_path / "my-vae"
    AutoencoderKL.from_config(AutoencoderKL.load_config(reference_config_dir("sd15"), subfolder="vae")
                              ).save_pretrained(vae_folder)
    wizard = page(server)
    wizard.set("dataset.prior_preservation", False)  # about export; the demo's prior images cost 30 more steps
    wizard.set("training.epochs", 1)
    wizard.set("model.vae", str(vae_folder))
    assert tomllib.loads(wizard.job_toml())["model"]["vae"] == str(vae_folder)
    run = Path(wizard.start().split("writing to ")[1])
    wizard.wait(300)
    assert metadata(run / "zkz_star.safetensors")["ss_vae_name"] == "my-vae"
    picked, note = wizard(str(run / "zkz_star.safetensors"), 0.8, "zkz_best", api_name="/keep_pick")
    assert Path(picked) == run / "zkz_best.safetensors", note
    again, note = wizard(str(run / "zkz_star.safetensors"), 0.8, "zkz_best", api_name="/keep_pick")
    assert not again and "already exists" in note  # never overwritten
    message, readme, sidecar, archive, model = wizard(picked, str(tmp_path / "card"), "A star.", "", 2,
                                                      api_name="/export_card")
    assert "2 samples" in message, message
    samples = sorted((tmp_path / "card" / "zkz_best" / "samples").glob("*.png"))
    assert len(samples) == 2
    params = Image.open(samples[0]).text["parameters"]
    assert "Steps: 12" in params and "CFG scale: 5" in params and "Model: shapes-base" in params, params
    assert Path(archive).name == "zkz_best.zip" and Path(model).name == "zkz_best.safetensors"
    assert "| VAE | my-vae |" in readme


# ---------------------------------------------------------------- presets and the whole flow

def test_preset_round_trip(server, tmp_path):
    wizard = page(server)
    wizard.set("network.dim", 4)
    preset, code = wizard("purple star", "me", "demo", api_name="/export_preset")
    assert code.startswith("LFP1.") and "[metadata]" in preset and str(tmp_path) not in preset
    other = tmp_path / "friend_set"
    shutil.copytree(ROOT / "presets" / "demo" / "zkz_star", other)
    friend = page(server)
    note, *views = friend(code, "embedded", str(other), api_name="/use_preset")
    job = tomllib.loads(views[-4])
    assert job["dataset"]["path"] == str(other) and job["network"]["dim"] == 4, note
    assert job["output"]["save_state"] is True and friend.check().startswith("Ready to train.")
    assert friend("LFP1.AAAA", "embedded", str(other), api_name="/use_preset")[0].startswith(
        "this preset cannot be used: not a valid preset code")


def test_dataset_tools_through_the_api(server, tmp_path):
    """Step 2's tools: a 64 px working copy (the originals stay) that becomes the job's dataset,
    then WD14 captions with the trigger word first (a tiny real ONNX tagger built offline)."""
    from captioning_models import build_tiny_wd14

    wizard = page(server)
    pics = draw_shape_images(tmp_path / "pics", 3, size=96, caption="x")
    folder, *_ = upload(wizard, sorted(pics.glob("*.png")), "shape", 2)
    note, report, gallery, _, *views = wizard(folder, 64, "center", False, api_name="/preprocess")
    copy = views[1]
    assert Path(copy) == Path(f"{folder}-64px") and note.startswith("3 images written to"), note
    assert "3 images used for training, 6 per epoch" in report and len(gallery) == 3
    assert f"Dataset: {copy}:" in as_read(wizard.set("training.epochs", 1)[-1])  # the copy is now the job's dataset
    assert {Image.open(p).size for p in Path(copy).rglob("*.png")} == {(64, 64)}
    assert {Image.open(p).size for p in Path(folder).rglob("*.png")} == {(96, 96)}  # untouched
    assert wizard(copy, 32, "center", False, api_name="/preprocess")[0].startswith(
        "resolution must be a multiple of 64")
    tagger = build_tiny_wd14(tmp_path / "wd14")
    message, *_ = wizard(copy, "wd14", str(tagger), 0.0, "overwrite", "zkz", api_name="/auto_caption")
    assert message.startswith("3 captions written"), message
    captions = [p.read_text(encoding="utf-8") for p in sorted(Path(copy).rglob("*.txt"))]
    assert len(captions) == 3 and all(c.startswith("zkz, ") and len(c) > 5 for c in captions)
    assert wizard(copy, "blip", str(tmp_path / "missing"), 0.3, "skip", "", api_name="/auto_caption")[0].startswith(
        "error")


def test_soft_warnings_say_why():
    from engine.config.job import parse_config
    from webapp.wizard_logic import demo_job, soft_warnings

    job = demo_job()
    job["optimizer"]["lr"] = 0.5
    job["network"]["alpha"] = 16.0
    job["training"]["batch_size"] = 16
    job["output"]["trigger_phrase"] = "girl"
    job["dataset"]["resolution"] = 256
    warned = soft_warnings(parse_config(job), 12, 5000, "sd15", seconds_per_step=0.5)
    joined = "\n".join(warned)
    for expected in ("learning rate 0.5 is far above", "alpha 16 is larger than dim 8",
                     "batch size 16 is larger than the dataset (12 images)",
                     "the trigger word 'girl' is a common word", "resolution 256 is low for this model",
                     "about 42 minutes on this machine for 5000 steps"):
        assert expected in joined, (expected, joined)
    assert not soft_warnings(parse_config(demo_job()), 12, 120, "")  # the demo itself: nothing to say
    # the usual learning rates are real models': the hypernetwork demo's 1e-3 is right for the
    # embedded base ("" family) and far too high for SD 1.5
    hyper = parse_config(tomllib.loads((ROOT / "presets/jobs/demo_hypernetwork.toml").read_text(encoding="utf-8")))
    assert not soft_warnings(hyper, 12, 200, "")
    assert any("learning rate 0.001 is far above" in w for w in soft_warnings(hyper, 12, 200, "sd15"))


def test_the_servers_terminal_shows_progress_not_library_noise(tmp_path):
    """`launcher.py` as a user starts it: its terminal prints the training's progress and none of
    the library warnings that mean nothing to a user."""
    import os
    import subprocess
    import sys
    import time

    from gradio_client import Client

    from webapp.server import find_free_port

    port = find_free_port("127.0.0.1", 7870)
    env = {**os.environ, "LORAFORGE_OUTPUT": str(tmp_path / "out"), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "terminal.txt", "w+", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(ROOT / "launcher.py"), "--no-browser", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while "running at" not in (tmp_path / "terminal.txt").read_text(encoding="utf-8"):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "terminal.txt").read_text()
            time.sleep(0.5)
        wizard = Wizard(Client(f"http://127.0.0.1:{port}/en/", verbose=False))
        wizard.set("training.epochs", 1)
        wizard.start()
        assert wizard.wait(300)[0].startswith("done")
    finally:
        proc.kill()  # (Ctrl+C waits for open browser connections; nothing here needs that)
        proc.wait(30)
    text = (tmp_path / "terminal.txt").read_text(encoding="utf-8")
    # one demo epoch: 30 steps of its images and 30 of the 36 prior-preservation images it drew first
    assert "step 60/60" in text and "LoRA Forge running at" in text, text
    assert "the base drew 36 prior-preservation images" in text, text
    for noise in ("kernels-community", "requires torchvision", "UserWarning"):
        assert noise not in text, (noise, text)


def test_prior_preservation_is_one_switch_that_counts_its_steps(tmp_path, monkeypatch):
    """The switch is there for the methods that can bleed (not for an embedding, which only adds
    a word). On a newcomer's own images whose captions lack the trigger it says it cannot work;
    once the trigger is in the captions the summary counts the base's images too (twice the
    steps), as the trainer will."""
    from conftest import draw_shape_images

    from webapp.job_form import BY_KEY, applies
    from webapp.wizard_logic import demo_job, plan

    switch = BY_KEY["dataset-prior_preservation"]
    assert applies(switch, "lora") and applies(switch, "hypernetwork") and not applies(switch, "textual_inversion")
    folder = draw_shape_images(tmp_path / "mine" / "2_green", 4, caption="a green disc")
    job = demo_job()
    job["dataset"].update(path=str(folder.parent), prior_preservation=True)
    job["training"].update(epochs=2, batch_size=2)
    before = plan(job)
    assert before.ok and "Steps: 8 (2 epochs x 4 per epoch)" in as_read(before.text), before.text
    assert any("none of your captions contains the trigger word 'zkz'" in w for w in before.warnings), before.warnings
    for caption in folder.glob("*.txt"):
        caption.write_text("zkz, " + caption.read_text(encoding="utf-8"), encoding="utf-8")
    import engine.data.folder
    import engine.training.data_setup

    scans = []
    real_scan = engine.data.folder.scan_dataset
    for module in (engine.data.folder, engine.training.data_setup):
        monkeypatch.setattr(module, "scan_dataset", lambda *a, **k: scans.append(a) or real_scan(*a, **k))
    after = plan(job)
    monkeypatch.undo()
    assert len(scans) == 1, scans  # every edit re-plans: the user's folder is read once, not per question
    assert "Steps: 16 (2 epochs x 8 per epoch)" in as_read(after.text), after.text
    assert not any("trigger word" in w for w in after.warnings), after.warnings
    job["dataset"]["prior_preservation"] = False
    assert "Steps: 8 (2 epochs x 4 per epoch)" in as_read(plan(job).text)
