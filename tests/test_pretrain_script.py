"""The embedded model's build script runs end to end and is deterministic for a seed (tested on
a very short schedule; the shipped model used the defaults)."""
from __future__ import annotations

import json

from safetensors import safe_open

from engine.demo.pretrain import main
from engine.export.hashes import safetensors_file_data_hash


def test_pretrain_short_schedule_is_deterministic(tmp_path):
    # Compared on tensor bytes + metadata, not whole-file bytes: the safetensors writer stores the
    # metadata map in hash-map order, which varies from process state to process state.
    builds = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["--out", str(out), "--per-spec", "1", "--vae-steps", "3", "--vae-extra", "20", "--epochs", "1"]) == 0
        single = out / "shapes-base.safetensors"
        with safe_open(str(single), "pt") as f:
            builds.append((safetensors_file_data_hash(single), f.metadata(), sorted(f.keys())))
        info = json.loads((out / "shapes-base.json").read_text())
        assert info["steps"] == 3 and info["images"] == 92  # 92 (shape, colour, background) specs
        assert (out / "shapes-base" / "model_index.json").is_file()
    assert builds[0] == builds[1]
