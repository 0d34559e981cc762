"""Our .pt files pass AUTOMATIC1111's safe-unpickle rules (tests/a1111_rules.py), carry the model's
name as the archive folder, and still load with torch.load(weights_only=True)."""
from __future__ import annotations

import pytest
import torch
from a1111_rules import Refused, check_pt
from conftest import lora_job


def test_the_rules_refuse_what_plain_torch_save_writes_today(tmp_path):
    """The check is not vacuous: this PyTorch's own archive (with .format_version,
    .storage_alignment, byteorder) is refused, and so is a pickle that names os.system."""
    torch.save({"x": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(Refused, match="bad file inside plain.pt"):
        check_pt(tmp_path / "plain.pt")

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    from engine.export.pt_io import save_pt

    with pytest.raises(Refused, match="forbidden"):
        save_pt({"x": Evil()}, tmp_path / "evil.pt", "evil") and check_pt(tmp_path / "evil.pt")


def _train(tmp_path, tiny_model_dir, tiny_dataset, network: dict, name: str):
    from engine.config.job import parse_config
    from engine.training.loop import train

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, network=network,
                   training={"epochs": 2, "batch_size": 4}, output={"name": name})
    for key in ("dim", "alpha"):
        if network["type"] != "lora":
            job["network"].pop(key, None)
    return train(parse_config(job))


@pytest.mark.parametrize("network", [
    {"type": "textual_inversion", "token": "zkzstar", "init_text": "star"},
    {"type": "dreamartist", "token": "zkzstar", "init_text": "star"},
    {"type": "hypernetwork"},
])
def test_every_pt_we_write_passes_a1111s_safe_loader(tmp_path, tiny_model_dir, tiny_dataset, network):
    result = _train(tmp_path, tiny_model_dir, tiny_dataset, network, "my model")
    pts = sorted(tmp_path.glob("*.pt"))
    assert pts and len(pts) >= 2, pts  # epoch files too
    from engine.export.pt_io import archive_folder

    for pt in pts:
        data = torch.load(pt, weights_only=True)
        assert data["name"] in ("my model", "my model-neg"), data["name"]
        assert check_pt(pt) == archive_folder(data["name"]), pt  # the model's name, not a temp file's
    if network["type"] == "hypernetwork":
        from engine.export.pick import pick_checkpoint

        picked = pick_checkpoint(result.saved[0], tmp_path / "picked" / "best.pt")
        assert check_pt(picked) == "best" and torch.load(picked, weights_only=True)["name"] == "best"


def test_aesthetic_embedding_pt_passes_too(tmp_path):
    from engine.generate.aesthetic import save_embedding

    pt, _ = save_embedding(torch.randn(768), tmp_path, "my style", "clip", 3)
    assert check_pt(pt) == "my_style"
    assert torch.load(pt, weights_only=True).shape == (768,)
