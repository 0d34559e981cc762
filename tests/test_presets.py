"""Every shipped job preset is a valid job (paths resolved against the app folder)."""
from __future__ import annotations

import tomllib

import pytest
from conftest import ROOT

from engine.config.job import parse_config

JOBS = sorted((ROOT / "presets" / "jobs").glob("*.toml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_preset_parses(path):
    job = tomllib.loads(path.read_text(encoding="utf-8"))
    cfg = parse_config(job)
    assert cfg.output.name


def test_there_are_presets_for_each_method_family():
    kinds = {tomllib.loads(p.read_text(encoding="utf-8")).get("network", {}).get("type", "lora") for p in JOBS}
    assert {"lora", "loha", "textual_inversion", "hypernetwork"} <= kinds
