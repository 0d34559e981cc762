"""Model card export from a real tiny training run: every card field, hashes recomputed here,
the A1111 sidecar's exact keys, escaping, sample images and the CLI."""
from __future__ import annotations

import binascii
import hashlib
import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from engine.export.card import SampleSettings, export_card, job_path_for, load_job_for
from engine.export.card_facts import CardError, gather_facts
from engine.export.card_render import CardInfo
from engine.export.pick import pick_checkpoint

SIDECAR_KEYS = ["description", "sd version", "activation text", "preferred weight", "negative text", "notes"]
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def independent_hashes(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return {"SHA256": hashlib.sha256(data).hexdigest().upper(),
            "AutoV2": hashlib.sha256(data).hexdigest()[:10].upper(),
            "AutoV3": hashlib.sha256(data[8 + n:]).hexdigest()[:12].upper(),
            "AutoV1": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper(),
            "CRC32": f"{binascii.crc32(data):08X}"}


@pytest.fixture(scope="module")
def card(trained_lora, tiny_model_dir, tmp_path_factory):
    cfg, result = trained_lora
    out = tmp_path_factory.mktemp("export")
    info = CardInfo(description=HOSTILE, author="tester", notes="first try | v1", tags=["shapes"],
                    negative_text="blurry", allow_commercial_use=["Image"], allow_derivatives=False)
    # no job given: the trainer's <name>_job.toml beside the file is found
    job = load_job_for(result.final_path)
    settings = SampleSettings(prompts=["zkz star, purple"], negative="blurry", count=2, steps=3, size=64)
    return export_card(result.final_path, out, info, job=job, base=str(tiny_model_dir), samples=settings)


def test_trainer_saves_its_job_beside_the_outputs(trained_lora):
    cfg, result = trained_lora
    path = job_path_for(result.final_path)
    assert path == Path(cfg.output.dir) / "tiny_job.toml"
    assert job_path_for(result.saved[0]) == path  # an epoch file finds it too
    assert load_job_for(result.final_path) == cfg


def test_card_json_fields_match_the_run(card, trained_lora):
    cfg, result = trained_lora
    data = json.loads((card.folder / "card.json").read_text(encoding="utf-8"))
    assert data["type"] == "LORA" and data["name"] == "tiny" and data["description"] == HOSTILE
    assert data["allowCommercialUse"] == ["Image"] and data["allowDerivatives"] is False
    assert data["allowNoCredit"] is True and data["tags"] == ["shapes"]
    assert data["creator"] == {"username": "tester"}
    (version,) = data["modelVersions"]
    assert version["baseModel"] == "SD 1.5" and version["trainedWords"] == ["zkz star"]
    assert version["epochs"] == cfg.training.epochs == 3
    assert version["steps"] == result.steps == 18
    assert version["settings"] == {"strength": 1.0}
    params = version["trainingDetails"]["params"]
    assert params["networkDim"] == cfg.network.dim and params["networkAlpha"] == cfg.network.alpha
    assert params["unetLR"] == cfg.optimizer.lr and params["optimizerType"] == "AdamW"
    assert params["maxTrainEpochs"] == 3 and params["numRepeats"] == 3 and params["resolution"] == 64
    assert params["trainBatchSize"] == cfg.training.batch_size and params["loraType"] == "lora"
    assert params["clipSkip"] == 1 and params["lrScheduler"] == cfg.scheduler.type
    (file,) = version["files"]
    model = card.folder / "tiny.safetensors"
    assert file["name"] == "tiny.safetensors" and file["metadata"]["format"] == "SafeTensor"
    assert file["metadata"]["fp"] == "fp32"  # the test job saves fp32
    assert file["sizeKB"] == round(model.stat().st_size / 1024, 2)
    assert file["hashes"] == independent_hashes(result.final_path)
    assert model.read_bytes() == result.final_path.read_bytes()
    extra = data["loraForge"]
    assert extra["datasetImages"] == 4 and extra["tagFrequency"] == {"zkz star": 4, "purple": 4}
    assert [img["meta"]["seed"] for img in version["images"]] == [42, 43]
    assert version["images"][0]["meta"]["prompt"] == "zkz star, purple <lora:tiny:1>"
    assert version["images"][0]["meta"]["negativePrompt"] == "blurry"


def test_sample_images_carry_a1111_parameters_and_show_the_lora(card, tiny_model_dir):
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
    from engine.models.loader import load_sd_components

    paths = sorted((card.folder / "samples").glob("*.png"))
    assert len(paths) == 2
    autov3 = independent_hashes(card.model)["AutoV3"].lower()
    text = Image.open(paths[0]).text["parameters"]
    assert text.splitlines()[0] == "zkz star, purple <lora:tiny:1>"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 3, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x64" in text
    assert f'Lora hashes: "tiny: {autov3}"' in text
    assert (card.folder / "tiny.preview.png").read_bytes() == paths[0].read_bytes()
    # the LoRA was really applied: the base alone draws something else with the same seed
    base = build_pipeline(load_sd_components(str(tiny_model_dir)))
    plain = generate_batch(base, [SampleSpec("zkz star, purple", "blurry", 42, 3, 7.0, 64, 64)])[0]
    assert plain.tobytes() != Image.open(paths[0]).convert("RGB").tobytes()


def test_the_card_measures_bleed_into_the_prompt_without_the_trigger(card, tiny_model_dir):
    """The sample prompt without its trigger ("purple"), drawn with the same seeds by the base
    and with the file: their mean pixel change is the card's bleed figure, shown in all three
    card files."""
    from engine.generate.grid_summary import bleed
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
    from engine.generate.swappers import NetworkSwapper
    from engine.models.loader import load_sd_components

    (measured,) = card.bleed
    assert (measured.prompt, measured.weight, measured.seeds) == ("purple", 1.0, 2)
    model = load_sd_components(str(tiny_model_dir))
    swapper = NetworkSwapper(model)
    swapper.load(card.model)
    pipe = build_pipeline(model)
    specs = [SampleSpec("purple", "blurry", 42 + i, 3, 7.0, 64, 64) for i in range(2)]
    swapper.set_weight(1.0)
    ours = generate_batch(pipe, specs, encode=swapper.encode)
    plain = generate_batch(build_pipeline(load_sd_components(str(tiny_model_dir))), specs)
    assert measured.value == pytest.approx(bleed(ours, plain), abs=0.051) and measured.value > 0
    readme = (card.folder / "README.md").read_text(encoding="utf-8")
    assert "## Bleed" in readme and f"- `purple`: {measured.value:g} at weight 1 (2 seeds)" in readme
    page = (card.folder / "card.html").read_text(encoding="utf-8")
    assert f"purple: {measured.value:g} at weight 1 (2 seeds)" in page
    data = json.loads((card.folder / "card.json").read_text(encoding="utf-8"))
    assert data["loraForge"]["bleed"] == [{"prompt": "purple", "value": measured.value, "weight": 1.0, "seeds": 2}]


def test_sidecar_readme_and_html(card):
    sidecar = json.loads((card.folder / "tiny.json").read_text(encoding="utf-8"))
    assert list(sidecar) == SIDECAR_KEYS
    assert sidecar == {"description": HOSTILE, "sd version": "SD1", "activation text": "zkz star",
                       "preferred weight": 1.0, "negative text": "blurry", "notes": "first try | v1"}
    readme = (card.folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\nlicense: \"creativeml-openrail-m\"\n")
    assert 'instance_prompt: "zkz star"' in readme
    for expected in ("| Type | LORA (lora) |", "| Base model | SD 1.5 |", "| Trigger words | zkz star |",
                     "| Recommended weight | 1 |", "| Epochs | 3 |", "| Steps | 18 |",
                     "| Dataset | 4 images (3_zkz star: 4 x 3) |", "| zkz star | 4 |",
                     f"| AutoV2 | {card.facts.hashes['AutoV2']} |", "| Commercial use | Image |",
                     "| Share merges | no |", "## Notes\n\nfirst try | v1",
                     "![zkz star, purple &lt;lora:tiny:1&gt;]", "`zkz star, purple <lora:tiny:1>`",
                     "&lt;script&gt;alert('x')&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"):
        assert expected in readme, expected
    assert "<script>" not in readme
    page = (card.folder / "card.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "src='samples/tiny_00_00.png'" in page


def test_picked_weight_becomes_the_recommendation(trained_lora, tmp_path):
    _, result = trained_lora
    picked = pick_checkpoint(result.saved[0], tmp_path / "tiny_best.safetensors", preferred_weight=0.7)
    facts = gather_facts(picked)
    assert facts.preferred_weight == 0.7 and facts.epochs == 1 and facts.name == "tiny_best"
    # without a job the card still has the run's parameters from the kohya metadata
    assert facts.params["networkDim"] == 4 and facts.params["numRepeats"] == 3
    assert facts.trigger_words == ["zkz star"]
    # ... the same values as the job gives for every row both know ("AdamW", not "01)")
    from_job = gather_facts(result.saved[0]).params
    shared = sorted(set(from_job) & set(facts.params))
    assert len(shared) >= 15 and "optimizerType" in shared
    assert {k: facts.params[k] for k in shared} == {k: from_job[k] for k in shared}
    out = export_card(picked, tmp_path / "card", samples=SampleSettings(count=0))
    assert json.loads(out.files["sidecar"].read_text())["preferred weight"] == 0.7
    assert "preview" not in out.files and not out.samples


def test_other_file_kinds_get_their_civitai_type(tmp_path):
    import torch

    from engine.export.safetensors_io import save_with_metadata
    from engine.generate.aesthetic import save_embedding

    save_with_metadata({"emb_params": torch.zeros(2, 32)}, tmp_path / "emb.safetensors",
                       {"name": "myword", "modelspec.architecture": "stable-diffusion-v1/textual-inversion"})
    save_with_metadata({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 48)},
                       tmp_path / "xl_emb.safetensors", {"name": "xlword"})
    save_embedding(torch.ones(1, 16), tmp_path, "style", "some/clip", 3)
    torch.save({320: (({}, {})), "layer_structure": [1, 2, 1], "name": "hn", "step": 5},
               tmp_path / "hn.pt")
    save_with_metadata({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "foreign_loha.safetensors", {})
    expected = {"emb.safetensors": ("TextualInversion", "SD 1.5", ["myword"]),
                "xl_emb.safetensors": ("TextualInversion", "SDXL 1.0", ["xlword"]),
                "style.pt": ("AestheticGradient", "Other", []),
                "style.safetensors": ("AestheticGradient", "Other", []),
                "hn.pt": ("Hypernetwork", "SD 1.5", []),
                "foreign_loha.safetensors": ("LoCon", "Other", [])}  # no kohya metadata
    for name, (kind, base, words) in expected.items():
        facts = gather_facts(tmp_path / name)
        assert (facts.civitai_type, facts.base_model, facts.trigger_words) == (kind, base, words), name
    assert gather_facts(tmp_path / "foreign_loha.safetensors").params["loraType"] == "loha"
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(CardError, match="junk.safetensors: cannot read"):
        gather_facts(tmp_path / "junk.safetensors")
    with pytest.raises(CardError, match="model file not found"):
        gather_facts(tmp_path / "missing.safetensors")


def test_card_cli(trained_lora, tiny_model_dir, tmp_path, capsys):
    from launcher import main

    _, result = trained_lora
    args = ["card", str(result.final_path), "--out", str(tmp_path), "--count", "1", "--steps", "2",
            "--size", "64", "--prompt", "zkz star", "--weight", "0.6", "--no-commercial",
            "--description", "a tiny test", "--offline"]
    assert main(args) == 0
    folder = tmp_path / "tiny"
    data = json.loads((folder / "card.json").read_text())
    assert data["allowCommercialUse"] == ["None"] and data["description"] == "a tiny test"
    assert data["modelVersions"][0]["settings"]["strength"] == 0.6
    assert Image.open(folder / "samples" / "tiny_00_00.png").text["parameters"].startswith(
        "zkz star <lora:tiny:0.6>")
    capsys.readouterr()
    (tmp_path / "notamodel.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    assert main(["card", str(tmp_path / "notamodel.safetensors"), "--out", str(tmp_path)]) == 2
    assert "not a LoRA" in capsys.readouterr().err


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub.constants

    from tests.hub_standin import HubStandIn

    # the stand-in speaks the plain HTTP upload protocol, not Xet storage
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # the suite runs offline (no real hub); the stand-in on 127.0.0.1 is the one server allowed
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubStandIn(token="hf_standin") as server:
        yield server


def test_upload_to_a_hub_stand_in(card, hub, monkeypatch):
    from engine.export.hub_upload import UploadError, upload_card

    url = upload_card(card.folder, "tester/tiny-lora", token="hf_standin", private=True, endpoint=hub.url)
    assert url.startswith(f"{hub.url}/tester/tiny-lora/commit/")
    assert hub.repos["tester/tiny-lora"]["private"] is True and not hub.unknown
    local = {p.relative_to(card.folder).as_posix(): p.read_bytes()
             for p in card.folder.rglob("*") if p.is_file()}
    assert hub.repos["tester/tiny-lora"]["files"] == local  # every file, byte for byte
    assert "tiny.safetensors" in local and "samples/tiny_00_01.png" in local
    # uploading again to the existing repo is a second commit, not an error
    upload_card(card.folder, "tester/tiny-lora", token="hf_standin", endpoint=hub.url)
    assert len(hub.commits) == 2
    with pytest.raises(UploadError, match="write access"):
        upload_card(card.folder, "tester/x", token="wrong", endpoint=hub.url)
    with pytest.raises(UploadError, match="must look like 'user/name'"):
        upload_card(card.folder, "../etc", token="hf_standin", endpoint=hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UploadError, match="no Hugging Face token"):
        upload_card(card.folder, "tester/x", endpoint=hub.url)
    with pytest.raises(UploadError, match="not an exported card folder"):
        upload_card(card.folder / "samples", "tester/x", token="hf_standin", endpoint=hub.url)


def test_card_cli_uploads(trained_lora, hub, tmp_path, monkeypatch):
    from launcher import main

    _, result = trained_lora
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    assert main(["card", str(result.final_path), "--out", str(tmp_path), "--count", "0",
                 "--upload", "tester/cli-lora", "--hub-endpoint", hub.url]) == 0
    files = hub.repos["tester/cli-lora"]["files"]
    assert sorted(files) == ["README.md", "card.html", "card.json", "tiny.json", "tiny.safetensors"]


@pytest.mark.parametrize("method", ["textual_inversion", "hypernetwork"])
def test_cards_for_embeddings_and_hypernetworks(method, tiny_model_dir, tiny_dataset, tmp_path):
    """A 2-step real run of each; the card finds its job, names the type and shows the A1111 way
    to use the file at the recommended strength in the sample's parameters text."""
    from conftest import lora_job

    from engine.config.job import parse_config
    from engine.training.loop import train

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out", training={"max_steps": 2})
    job["network"] = ({"type": "textual_inversion", "token": "zkzstar", "num_vectors": 2}
                      if method == "textual_inversion" else {"type": "hypernetwork"})
    job["output"]["name"] = "thing"
    result = train(parse_config(job))
    file = result.final_path if method == "hypernetwork" else result.final_path.with_suffix(".pt")
    out = export_card(file, tmp_path / "export", job=load_job_for(result.final_path),
                      base=str(tiny_model_dir), preferred_weight=0.8,
                      samples=SampleSettings(prompts=["a star"], count=1, steps=2, size=64))
    data = json.loads(out.files["card_json"].read_text())
    text = Image.open(out.folder / out.samples[0].path).text["parameters"].splitlines()[0]
    version = data["modelVersions"][0]
    if method == "textual_inversion":
        assert data["type"] == "TextualInversion" and version["trainedWords"] == ["thing"]
        assert text == "(thing:0.8), a star"  # the file name is the word, as in A1111
    else:
        assert data["type"] == "Hypernetwork" and version["files"][0]["metadata"]["format"] == "PickleTensor"
        assert text == "a star <hypernet:thing:0.8>"
    assert version["baseModel"] == "SD 1.5" and version["steps"] == 2
    assert version["files"][0]["hashes"]["SHA256"] == hashlib.sha256(file.read_bytes()).hexdigest().upper()
    assert json.loads(out.files["sidecar"].read_text())["preferred weight"] == 0.8


@pytest.mark.parametrize("kind", ["lora", "textual_inversion", "hypernetwork", "dreambooth"])
def test_hostile_trigger_words_and_names_stay_text_in_the_readme(card, kind):
    """A trigger word with a backtick must not close its code span and leave HTML live: the
    README is rendered by CommonMark (what Hugging Face and Civitai use) with HTML allowed, and
    no tag of ours or the user's may come out of it."""
    from dataclasses import replace

    from markdown_it import MarkdownIt

    from engine.export.card_render import CardInfo, md_code, readme

    word = "zkz`</code><script>alert(1)</script>``x"
    facts = replace(card.facts, kind=kind, trigger_words=[word], name="<img src=x onerror=alert(2)>",
                    file=card.facts.file.with_name("a`<script>b.safetensors"))
    html = MarkdownIt("commonmark").render(readme(facts, CardInfo(), card.samples))
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    for text in (word, "`", "``a``", "a`", "`a", ""):  # the span shows exactly the text
        rendered = MarkdownIt("commonmark").render(md_code(text))
        shown = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        assert rendered == f"<p><code>{shown}</code></p>\n" or (not text.strip() and "<code>" in rendered), \
            (text, rendered)
