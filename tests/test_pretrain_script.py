"""The embedded model's build script runs end to end and is deterministic for a seed (tested on
a very short schedule; the shipped model used the defaults)."""
from __future__ import annotations

import hashlib
import json

from engine.demo.pretrain import main


def test_pretrain_short_schedule_is_deterministic(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["--out", str(out), "--per-spec", "1", "--vae-steps", "3", "--epochs", "1"]) == 0
        single = out / "shapes-base.safetensors"
        digests.append(hashlib.sha256(single.read_bytes()).hexdigest())
        info = json.loads((out / "shapes-base.json").read_text())
        assert info["steps"] == 3 and info["images"] == 92  # 92 (shape, colour, background) specs
        assert (out / "shapes-base" / "model_index.json").is_file()
    assert digests[0] == digests[1]
