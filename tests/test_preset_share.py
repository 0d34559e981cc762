"""Shareable presets: export -> import round trips to the same job (TOML and text code), no local
paths leak, and every kind of bad preset is refused with a message naming the field."""
from __future__ import annotations

import base64
import pickle
import zlib

import pytest
from conftest import ROOT

from engine.config.job import load_config, parse_config
from engine.config.preset_share import (
    CODE_PREFIX,
    PresetError,
    export_preset,
    from_code,
    job_from_preset,
    parse_preset,
    to_code,
)

JOBS = ["demo_lora", "demo_loha", "demo_ti", "sd15_lora_example", "sd15_hypernetwork_example"]
GOOD = """
[metadata]
name = "anime face"
schema_version = 1
method = "lora"

[network]
dim = 32
alpha = 16.0

[training]
epochs = 12
"""


@pytest.mark.parametrize("job", JOBS)
def test_export_import_gives_the_same_job(job):
    cfg = load_config(ROOT / "presets" / "jobs" / f"{job}.toml")
    text = export_preset(cfg, name=job, author="me", base_family="sd15", target_tier="cpu")
    again = job_from_preset(text, base=cfg.model.base, dataset=cfg.dataset.path, output_dir=cfg.output.dir)
    assert again == cfg
    assert job_from_preset(to_code(text), cfg.model.base, cfg.dataset.path, cfg.output.dir) == cfg
    meta, settings = parse_preset(text)
    assert (meta.name, meta.author, meta.method, meta.target_tier) == (job, "me", cfg.network.type, "cpu")
    assert "dataset" not in settings or "path" not in settings["dataset"]


def test_presets_are_sparse_and_carry_no_local_paths(tmp_path):
    base_file = tmp_path / "my_model.safetensors"
    base_file.write_bytes(b"x")
    cfg = parse_config({
        "model": {"base": str(base_file)},
        "dataset": {"path": "/home/me/secret_photos", "reg_path": "C:\\\\reg", "resolution": 768},
        "output": {"dir": "/home/me/out", "logging_dir": "~/logs", "name": "mine"},
        "training": {"epochs": 3}})
    text = export_preset(cfg, name="p")
    for leak in ("secret_photos", "my_model", "/home/me", "reg", "logs"):
        assert leak not in text.replace("[metadata]", ""), leak
    _, settings = parse_preset(text)
    assert settings == {"dataset": {"resolution": 768}, "training": {"epochs": 3}, "output": {"name": "mine"}}
    # a hub id or the embedded model is shareable and kept
    hub = parse_config({"model": {"base": "someone/sd15-anime"}, "dataset": {"path": "d"}})
    assert parse_preset(export_preset(hub, name="h"))[1] == {"model": {"base": "someone/sd15-anime"}}


def test_text_code_round_trip_and_damage():
    code = to_code(GOOD)
    assert code.startswith(CODE_PREFIX) and "\n" not in code and len(code) < 200
    assert from_code(code) == GOOD
    assert from_code(code[:20] + "\n " + code[20:]) == GOOD  # line breaks from a chat are ignored
    with pytest.raises(PresetError, match="cut off"):
        from_code(code[:-10])
    bomb = CODE_PREFIX + base64.urlsafe_b64encode(zlib.compress(b"#" * 10_000_000)).decode()
    with pytest.raises(PresetError, match="expands beyond 64 KiB"):
        from_code(bomb)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('name = "anime face"', 'nmae = "anime face"'), "metadata.nmae: unknown field"),
    (lambda t: t.replace("epochs = 12", "epocs = 12"), "training.epocs: unknown field"),
    (lambda t: t.replace("epochs = 12", "epochs = 0"), "training.epochs: Input should be greater than or equal to 1"),
    (lambda t: t.replace("dim = 32", "dim = -4"), "network.dim: Input should be greater than or equal to 1"),
    (lambda t: t.replace("schema_version = 1", "schema_version = 7"), "newer than this build reads (1); update"),
    (lambda t: t.replace("schema_version = 1", "schema_version = 0"), "not a valid version"),
    (lambda t: t.replace("schema_version = 1", 'schema_version = "1"'), "must be an integer"),
    (lambda t: t.replace("schema_version = 1\n", ""), "must be an integer (got None)"),
    (lambda t: t.replace('method = "lora"', 'method = "loha"'), "metadata.method is 'loha' but network.type is 'lora'"),
    (lambda t: t + '\n[output]\ndir = "/home/me/out"\n', "output.dir: a preset carries no local paths"),
    (lambda t: t.replace("[metadata]", '[metadata]\ntarget_tier = "3gb"'), "unknown tier '3gb'"),
    (lambda t: t.split("[network]")[1], "needs a [metadata] table"),
    (lambda t: t + "\n[[[", "not valid TOML"),
    (lambda t: pickle.dumps({"a": 1}).decode("latin-1"), "not valid TOML"),
    (lambda t: t + "#" * 70_000, "larger than 64 KiB"),
])
def test_bad_presets_are_refused_with_the_field_named(change, message):
    assert parse_preset(GOOD)[1] == {"network": {"dim": 32, "alpha": 16.0}, "training": {"epochs": 12}}
    with pytest.raises(PresetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_preset(change(GOOD))


def test_older_preset_versions_are_migrated(monkeypatch):
    """Only schema 1 exists so far; this registers a made-up 1 -> 2 step to check that an old
    preset goes through the migration chain before it is validated."""
    import engine.config.preset_share as ps

    def rename_epochs(data):
        data["training"]["epochs"] = data["training"].pop("num_epochs")
        return data

    monkeypatch.setattr(ps, "PRESET_SCHEMA_VERSION", 2)
    monkeypatch.setitem(ps.MIGRATIONS, 1, rename_epochs)
    monkeypatch.setattr(ps.PresetMetadata.model_fields["schema_version"], "default", 2)
    old = GOOD.replace("epochs = 12", "num_epochs = 12")
    meta, settings = ps.parse_preset(old)
    assert meta.schema_version == 2 and settings["training"] == {"epochs": 12}
    monkeypatch.delitem(ps.MIGRATIONS, 1)
    with pytest.raises(PresetError, match="schema_version 1 cannot be read"):
        ps.parse_preset(old)


def test_preset_cli_round_trip(tmp_path, capsys):
    from launcher import main

    job = ROOT / "presets" / "jobs" / "demo_loha.toml"
    assert main(["preset", "export", "--config", str(job), "--name", "demo", "--tier", "cpu",
                 "--out", str(tmp_path / "p.toml"), "--code"]) == 0
    code = capsys.readouterr().out.strip().splitlines()[-1]
    cfg = load_config(job)
    for source in (str(tmp_path / "p.toml"), code):
        assert main(["preset", "import", source, "--base", cfg.model.base, "--dataset", cfg.dataset.path,
                     "--output-dir", cfg.output.dir, "--out", str(tmp_path / "job.toml")]) == 0
        assert load_config(tmp_path / "job.toml") == cfg
    (tmp_path / "bad.toml").write_text(GOOD.replace("dim = 32", "dim = 0"))
    assert main(["preset", "import", str(tmp_path / "bad.toml"), "--base", "embedded", "--dataset", "d"]) == 2
    assert "network.dim" in capsys.readouterr().err
    assert main(["preset", "export", "--config", str(job), "--name", "x", "--tier", "2gb"]) == 2
