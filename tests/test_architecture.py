"""The design the code is meant to keep: methods and families live in their registries, a job
validates without torch, modules import each other without cycles, and a new method needs
nothing but its own module and a registration."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _sources(*folders: str):
    for folder in folders:
        yield from (ROOT / folder).rglob("*.py")


def test_no_method_name_tests_outside_the_registry():
    pattern = re.compile(r'network\.type ==|network\.type in|in \("textual_inversion"|"lora", "locon"|is_sdxl')
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _sources("engine", "webapp")
             if "engine/methods" not in p.as_posix() and "engine/models/families.py" not in p.as_posix()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found


def test_family_ids_are_written_only_where_families_are_told_apart():
    """Outside the family registry a family id appears only where files are read or written in
    another program's terms (detection from keys, file formats, the tiny test models)."""
    allowed = {"engine/models/families.py", "engine/models/reference.py", "engine/models/loader.py",
               "engine/models/toy.py", "engine/export/card_facts.py", "engine/export/metadata.py",
               "engine/methods/hypernetwork.py", "engine/methods/textual_inversion.py"}
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _sources("engine", "webapp")
             if p.relative_to(ROOT).as_posix() not in allowed
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r'"(sd15|sd2|sdxl)"', line)]
    assert not found


def _import_graph(lazy: bool) -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in _sources("engine")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in (ast.walk(tree) if lazy else tree.body):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_import_graph(lazy=False)) is None


def test_lower_layers_never_reach_up():
    """Even inside functions: the words (i18n) and the family table import nothing of the engine;
    the job schema never imports training, networks, export or the model loader's torch code."""
    graph = _import_graph(lazy=True)
    assert not graph["engine.i18n"] and not graph["engine.models.families"]
    for name in (n for n in graph if n.startswith("engine.config")):
        bad = {d for d in graph[name] if d.startswith(("engine.training", "engine.networks", "engine.export"))}
        assert not bad, name


def test_validating_a_job_imports_no_torch():
    code = """
import sys
from engine.config.job import parse_config
for net in ({"type": "lora"}, {"type": "lokr", "factor": 4}, {"type": "hypernetwork", "lr_schedule": "1e-5:10, 1e-6"},
            {"type": "textual_inversion", "token": "zkz", "lr_schedule": "0.005:100, 1e-3"}):
    parse_config({"model": {"base": "embedded"}, "dataset": {"path": "d"}, "network": net,
                  "sample": {"prompts": ["a star --n blur --w 64 --h 64 --d 1"]}})
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- a new method, registry only

def _toy_method():
    from safetensors.torch import save_file

    from engine.config.base import Section
    from engine.methods import MethodParts, TrainingMethod

    class ToyConfig(Section):
        type: Literal["toy"] = "toy"
        start: float = 0.0

    class ToyMethod(TrainingMethod):
        """A learned per-channel gain on the UNet's prediction: nothing else in the engine knows it."""
        type = "toy"
        config = ToyConfig
        usual_lr = (1e-3, 1e-1)

        def trains_text_encoder(self, net) -> bool:
            return False

        def attach(self, cfg, model, train_te, device):
            gain = torch.nn.Parameter(torch.full((model.unet.config.out_channels, 1, 1), cfg.network.start,
                                                 device=device))
            return MethodParts([gain], [], state=gain)

        def predict(self, s, cfg, unet, noisy, timesteps, hidden, added, encode):
            return unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample * (1 + s.state)

        def save(self, cfg, s, accelerator, path, epoch, step, final):
            save_file({"toy.gain": s.state.detach().cpu().contiguous()}, str(path), {"epoch": str(epoch)})
            return path

    return ToyMethod()


def test_a_new_method_trains_through_the_registry_alone(tiny_model_dir, tiny_dataset, tmp_path):
    from safetensors.torch import load_file

    from engine.config.job import ConfigError, parse_config
    from engine.methods import methods, register
    from engine.methods.base import unregister
    from engine.training.loop import train

    job = {"model": {"base": str(tiny_model_dir)}, "dataset": {"path": str(tiny_dataset), "resolution": 64},
           "network": {"type": "toy", "start": 0.5},
           "optimizer": {"lr": 0.05, "weight_decay": 0.0},
           "training": {"epochs": 1, "max_steps": 3, "batch_size": 2, "seed": 1},
           "output": {"dir": str(tmp_path), "name": "toy"}}
    with pytest.raises(ConfigError, match="network"):
        parse_config(job)
    register(_toy_method())
    try:
        assert "toy" in methods()
        cfg = parse_config(job)
        assert cfg.network.start == 0.5
        result = train(cfg)
        gain = load_file(str(result.final_path))["toy.gain"]
        assert result.steps == 3 and gain.shape == (4, 1, 1)
        assert torch.isfinite(gain).all() and not torch.allclose(gain, torch.full_like(gain, 0.5))
        assert (tmp_path / "toy_job.toml").read_text().count('type = "toy"') == 1
    finally:
        unregister("toy")
    with pytest.raises(ConfigError):
        parse_config(job)


def test_every_written_file_carries_the_engine_version(tmp_path):
    from safetensors import safe_open

    from engine import VERSION_KEY, __version__
    from engine.export.pt_io import save_pt
    from engine.export.safetensors_io import save_with_metadata
    from engine.models.single_file import save_single_file
    from engine.models.toy import tiny_sd15_components

    def meta(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata()

    lora = save_with_metadata({"a": torch.zeros(2)}, tmp_path / "a.safetensors", {"ss_epoch": "1"})
    assert meta(lora)[VERSION_KEY] == __version__
    picked = save_with_metadata({"a": torch.zeros(2)}, tmp_path / "b.safetensors", {VERSION_KEY: "0.0.9"})
    assert meta(picked)[VERSION_KEY] == "0.0.9"  # a re-saved file keeps the version that trained it
    pt = save_pt({"name": "x", "step": 1}, tmp_path / "x.pt", "x")
    assert torch.load(pt, weights_only=True)[VERSION_KEY] == __version__
    checkpoint = save_single_file(tiny_sd15_components(), tmp_path / "c.safetensors")
    assert meta(checkpoint)[VERSION_KEY] == __version__
