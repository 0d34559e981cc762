"""Grids, the Compare tab and card samples start from what the base model draws best with."""
from __future__ import annotations

from PIL import Image

from engine.generate.sampling_defaults import EMBEDDED, for_base, for_family
from engine.models import families


def test_defaults_follow_the_base_model(tiny_model_dir):
    assert for_base("embedded") == EMBEDDED and EMBEDDED.cfg_scale == 5.0 and EMBEDDED.size == 64
    assert for_base(str(tiny_model_dir)) == for_family("sd15")  # a diffusers folder: its family
    assert for_family("sdxl").size == 1024 and for_family("sd15").size == 512
    assert for_base("someone/some-model") == for_family(families.DEFAULT.id)  # a hub id is not looked up


def test_cli_grid_uses_the_bases_defaults_unless_given(tiny_model_dir, trained_lora, tmp_path):
    from launcher import main

    args = ["grid", "--base", str(tiny_model_dir), "--checkpoints", str(trained_lora[1].final_path),
            "--prompt", "zkz star", "--weights", "1", "--size", "64", "--steps", "2", "--offline"]
    assert main([*args, "--out", str(tmp_path / "usual")]) == 0
    cell = next((tmp_path / "usual").rglob("cells/*.png"))
    text = Image.open(cell).text["parameters"]
    assert "CFG scale: 7" in text, text  # the SD 1.x family's
    assert main([*args, "--cfg", "4", "--out", str(tmp_path / "given")]) == 0
    text = Image.open(next((tmp_path / "given").rglob("cells/*.png"))).text["parameters"]
    assert "CFG scale: 4" in text, text


def test_the_compare_tab_follows_a_typed_base(server, tiny_model_dir):
    from gradio_client import Client

    client = Client(server, verbose=False)
    assert tuple(client.predict(str(tiny_model_dir), api_name="/base_defaults")) == (512, 20, 7.0, 2)
    assert tuple(client.predict("embedded", api_name="/base_defaults")) == (64, 20, 5.0, 4)


def test_card_samples_follow_the_run_else_the_base(tiny_model_dir):
    """A card's sample settings when none are given: the run's [sample] line if it had one, else
    what the base draws best with (the embedded model at CFG 5 and 64 px, not SD's 7)."""
    from engine.config.job import parse_config
    from engine.export.card import SampleSettings

    def job(base, **sample):
        j = {"model": {"base": base}, "dataset": {"path": "d", "resolution": 64},
             "output": {"dir": "o", "name": "n"}}
        if sample:
            j["sample"] = sample
        return parse_config(j)

    got = SampleSettings.usual(job("embedded"), None)
    assert (got.cfg_scale, got.steps, got.size) == (5.0, 20, 64)
    got = SampleSettings.usual(job("embedded", prompts=["zkz --l 6 --s 12"]), None)
    assert (got.cfg_scale, got.steps, got.prompts) == (6.0, 12, ["zkz"])
    got = SampleSettings.usual(None, str(tiny_model_dir))
    assert (got.cfg_scale, got.size) == (7.0, 512)
    assert SampleSettings.usual(None, "embedded").cfg_scale == 5.0
