"""A1111 hypernetworks: real tiny runs; the .pt file read back with weights_only and applied by an
independent re-implementation of A1111's attention-with-hypernetwork math."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import ROOT, denoising_loss, lora_job
from PIL import Image
from test_lora_training import _unet_inputs
from torch import nn

from engine.config.job import ConfigError, parse_config
from engine.models.loader import load_sd_components
from engine.training.loop import train

FILE_KEYS = {"layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
             "use_dropout", "dropout_structure", "activate_output", "last_layer_dropout",
             "optional_info", "name", "step", "sd_checkpoint", "sd_checkpoint_name",
             "loraforge_version"}  # ours: the engine version (A1111 and ComfyUI read only their keys)
RICH = {"layer_structure": [1, 1.5, 1], "activation": "relu", "layer_norm": True,
        "dropout_structure": [0, 0.1, 0]}


# --- the reference: A1111's module layout and its CrossAttention forward, written for the test ---

def a1111_sequence(width: int, f: dict) -> list[nn.Module]:
    acts = {"linear": None, "relu": nn.ReLU, "swish": nn.Hardswish}
    ls, out = f["layer_structure"], []
    for i in range(len(ls) - 1):
        out.append(nn.Linear(int(width * ls[i]), int(width * ls[i + 1])))
        act = acts[f["activation_func"]]
        if act and (i < len(ls) - 2 or f["activate_output"]):
            out.append(act())
        if f["is_layer_norm"]:
            out.append(nn.LayerNorm(int(width * ls[i + 1])))
        if f["dropout_structure"][i + 1] > 0:
            out.append(nn.Dropout(f["dropout_structure"][i + 1]))
    return out


class RefModule(nn.Module):
    def __init__(self, width, f, state, strength):
        super().__init__()
        self.linear = nn.Sequential(*a1111_sequence(width, f))
        self.linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        self.strength = strength
        self.eval()

    def forward(self, x):
        return x + self.linear(x) * self.strength


class A1111AttnProcessor:
    """q from x; k, v from the hypernetwork-transformed context picked by its last dimension."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        pair = self.layers.get(context.shape[-1])
        ck, cv = (pair[0](context), pair[1](context)) if pair else (context, context)
        b, h = hidden_states.shape[0], attn.heads
        split = lambda t: t.reshape(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(ck)), split(attn.to_v(cv))
        weights = (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


def apply_like_a1111(unet, path, strength=1.0) -> None:
    f = torch.load(str(path), map_location="cpu", weights_only=True)
    layers = {w: tuple(RefModule(w, f, sd, strength) for sd in f[w]) for w in f if isinstance(w, int)}
    unet.set_attn_processor(A1111AttnProcessor(layers))


def _job(tiny_model_dir, tiny_dataset, out, **network):
    job = lora_job(tiny_model_dir, tiny_dataset, out, network={"type": "hypernetwork", **network},
                   optimizer={"type": "AdamW", "lr": 3e-3})
    job["network"].pop("dim"), job["network"].pop("alpha")
    job["output"]["name"] = "hyper"
    return parse_config(job)


@pytest.fixture(scope="module", params=["plain", "rich"])
def hyper_run(request, tiny_model_dir, tiny_dataset, tmp_path_factory):
    extra = RICH if request.param == "rich" else {}
    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp("hyper"), **extra)
    model = load_sd_components(str(tiny_model_dir))
    result = train(cfg, model=model)
    return request.param, cfg, result, model


def test_file_is_the_a1111_format(hyper_run, tiny_model_dir):
    kind, _, result, model = hyper_run
    assert [p.name for p in result.saved] == ["hyper-000001.pt", "hyper-000002.pt", "hyper.pt"]
    f = torch.load(str(result.final_path), map_location="cpu", weights_only=True)
    widths = sorted(k for k in f if isinstance(k, int))
    unet = load_sd_components(str(tiny_model_dir)).unet
    assert widths == sorted({m.to_k.in_features for m in unet.modules() if hasattr(m, "to_k")})
    assert set(f) - set(widths) == FILE_KEYS
    assert f["name"] == "hyper" and f["step"] == 18 and f["weight_initialization"] == "Normal"
    want = RICH if kind == "rich" else {"layer_structure": [1, 2, 1], "activation": "linear",
                                        "layer_norm": False, "dropout_structure": [0, 0, 0]}
    assert f["layer_structure"] == want["layer_structure"] and f["activation_func"] == want["activation"]
    assert f["is_layer_norm"] == want["layer_norm"] and f["dropout_structure"] == want["dropout_structure"]
    assert f["use_dropout"] == (kind == "rich") and f["last_layer_dropout"] == (kind == "rich")
    for w in widths:
        pair = f[w]
        assert isinstance(pair, tuple) and len(pair) == 2
        ref = nn.Sequential(*a1111_sequence(w, f))
        assert set(pair[0]) == {f"linear.{k}" for k in ref.state_dict()}
        for k, v in ref.state_dict().items():
            assert pair[0][f"linear.{k}"].shape == v.shape and pair[0][f"linear.{k}"].dtype == torch.float32


def test_a1111_application_equals_trained_network(hyper_run, tiny_model_dir):
    _, _, result, trained = hyper_run
    base = load_sd_components(str(tiny_model_dir))
    x, t, ctx = _unet_inputs(base.unet)
    with torch.no_grad():
        base_out = base.unet(x, t, ctx).sample
        want = trained.unet(x, t, ctx).sample
    assert (want - base_out).abs().max() > 1e-4
    apply_like_a1111(base.unet, result.final_path)
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, t, ctx).sample, want, rtol=1e-4, atol=1e-5)


def test_strength_through_the_grid_swapper(hyper_run, tiny_model_dir):
    from engine.generate.swappers import NetworkSwapper

    _, _, result, _ = hyper_run
    model, ref = load_sd_components(str(tiny_model_dir)), load_sd_components(str(tiny_model_dir))
    x, t, ctx = _unet_inputs(model.unet)
    with torch.no_grad():
        base_out = model.unet(x, t, ctx).sample
    swapper = NetworkSwapper(model)
    for path in result.saved:
        swapper.load(path)
    assert swapper.injections == 1 and swapper.prompt_tag("hyper", 0.5) == "<hypernet:hyper:0.5>"
    swapper.set_weight(0.0)
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, ctx).sample, base_out)
    swapper.set_weight(0.5)
    apply_like_a1111(ref.unet, result.final_path, strength=0.5)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, ctx).sample, ref.unet(x, t, ctx).sample,
                                   rtol=1e-4, atol=1e-5)


def test_loss_goes_down_and_base_untouched(hyper_run, tiny_model_dir, tiny_dataset):
    _, _, result, trained = hyper_run
    model = load_sd_components(str(tiny_model_dir))
    for (name, p), q in zip(model.unet.state_dict().items(), trained.unet.state_dict().values()):
        assert torch.equal(p, q), name
    before = denoising_loss(model, tiny_dataset)
    apply_like_a1111(model.unet, result.final_path)
    after = denoising_loss(model, tiny_dataset)
    # A hypernetwork only reshapes attention inputs: on the random tiny model 18 steps buy
    # ~12% (plain) / ~1.5% (relu + layer norm + dropout). Deterministic: no learning = equal.
    print(f"fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.99 * before, (before, after)


def test_grid_rows_are_epochs_columns_strength(hyper_run, tiny_model_dir, tmp_path):
    from engine.generate.grid import GridJob, run_grid

    _, _, result, _ = hyper_run
    model = load_sd_components(str(tiny_model_dir))
    job = GridJob(checkpoints=result.saved[-2:], prompts=["zkz star"], weights=[0.0, 1.0], seeds=[3],
                  steps=3, width=64, height=64)
    grid = run_grid(model, job, tmp_path)
    assert grid.row_labels == ["epoch 2", "hyper"] and grid.col_labels == ["strength 0", "strength 1"]
    px = {k: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for k, p in grid.cells.items()}
    assert np.array_equal(px[(0, 0, 0)], px[(1, 0, 0)])
    assert np.abs(px[(1, 0, 0)] - px[(1, 1, 0)]).max() > 0
    assert "<hypernet:hyper:1>" in Image.open(grid.cells[(1, 1, 0)]).text["parameters"]


def test_lr_schedule_in_a1111_syntax(tiny_model_dir, tiny_dataset, tmp_path):
    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path, lr_schedule="1e-3:2, 1e-4")
    cfg.training.max_steps = 4
    lrs = []
    from engine.training.callbacks import Callbacks

    class Record(Callbacks):
        def on_step(self, info):
            lrs.append(info.lr)

    train(cfg, Record())
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])


@pytest.mark.parametrize("network, message", [
    ({"layer_structure": [2, 1]}, "start and end with 1"),
    ({"layer_structure": [1, 0, 1]}, "> 0"),
    ({"dropout_structure": [0, 0.1]}, "one value per layer_structure"),
    ({"dropout_structure": [0.2, 0.1, 0]}, "first and last 0"),
    ({"activation": "wiggle"}, "network.activation"),
    ({"lr_schedule": "1e-5:100, 1e-6:50"}, "network.lr_schedule"),
])
def test_config_rejections(tiny_model_dir, tiny_dataset, tmp_path, network, message):
    with pytest.raises(ConfigError, match=message):
        _job(tiny_model_dir, tiny_dataset, tmp_path, **network)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    from engine.networks.hypernetwork import HypernetworkFileError, load_hypernetwork

    bad = tmp_path / "evil.pt"
    torch.save({768: _Evil(), "layer_structure": [1, 2, 1]}, bad, pickle_module=pickle)
    with pytest.raises(HypernetworkFileError, match="evil.pt: not a loadable"):
        load_hypernetwork(bad)


def test_old_files_without_dropout_structure_load(tmp_path):
    """Files from older A1111 builds: use_dropout + last_layer_dropout, 'linear1/linear2' keys."""
    from engine.networks.hypernetwork import load_hypernetwork

    old = {32: ({"linear1.weight": torch.ones(64, 32), "linear1.bias": torch.zeros(64),
                 "linear2.weight": torch.ones(32, 64), "linear2.bias": torch.zeros(32)},) * 2,
           "layer_structure": [1, 2, 1], "use_dropout": False, "name": "old"}
    torch.save(old, tmp_path / "old.pt")
    net, meta = load_hypernetwork(tmp_path / "old.pt")
    assert meta["name"] == "old" and net.widths == [32]
    assert torch.equal(net.pairs["32"][0].linear[0].weight, torch.ones(64, 32))


def test_pick_epoch_keeps_the_layers_and_renames(hyper_run, tmp_path):
    from engine.export.pick import pick_checkpoint

    _, _, result, _ = hyper_run
    dest = pick_checkpoint(result.saved[0], tmp_path / "mystyle.safetensors")
    assert dest.name == "mystyle.pt"
    src = torch.load(str(result.saved[0]), weights_only=True)
    got = torch.load(str(dest), weights_only=True)
    assert got["name"] == "mystyle" and got["step"] == src["step"]
    for w in (k for k in src if isinstance(k, int)):
        for a, b in zip(src[w], got[w]):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_high_learning_rate_gets_a_hint(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.training.callbacks import Callbacks

    logs = []

    class Log(Callbacks):
        def on_log(self, message):
            logs.append(message)

    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path)
    cfg.training.max_steps = 1
    train(cfg, Log())
    assert any("usually trained at lr 5e-6" in m for m in logs)


# --- ComfyUI's reading of the same file (its hypernetwork loader, written here for the test) ---

COMFY_ACTS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
              "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign,
              "mish": nn.Mish}


def comfy_sequence(f: dict, state: dict) -> nn.Sequential | None:
    """ComfyUI's layer list for one module: every '.weight' key counts as a layer (LayerNorms too),
    and an activation follows each linear layer that is not the last of that list."""
    act = f.get("activation_func", "linear")
    if act not in COMFY_ACTS:
        return None  # ComfyUI logs an error and applies no hypernetwork
    names = [k[:-len(".weight")] for k in state if k.endswith(".weight")]
    layers, i = [], 0
    while i < len(names):
        w, b = state[f"{names[i]}.weight"], state[f"{names[i]}.bias"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": b})
        layers.append(lin)
        if act != "linear" and (i != len(names) - 1 or f.get("activate_output")):
            layers.append(COMFY_ACTS[act]())
        if f.get("is_layer_norm"):
            i += 1
            ln = nn.LayerNorm(state[f"{names[i]}.weight"].shape[0])
            ln.load_state_dict({"weight": state[f"{names[i]}.weight"], "bias": state[f"{names[i]}.bias"]})
            layers.append(ln)
        i += 1
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation, layer_norm, activate_output", [
    ("linear", False, False), ("relu", False, False), ("linear", True, False), ("relu", True, True),
    ("relu", True, False), ("gelu", False, False), ("silu", True, False)])
def test_a1111_only_settings_are_exactly_where_comfyui_reads_the_file_differently(
        activation, layer_norm, activate_output):
    """The warning (engine.networks.hypernetwork.comfyui_differences) is given exactly when
    ComfyUI's reading of the file applies nothing or computes something else than A1111's."""
    from engine.networks.hypernetwork import Hypernetwork, comfyui_differences

    torch.manual_seed(0)
    net = Hypernetwork([320], [1, 2, 1], activation, layer_norm, activate_output)
    f = net.to_file_dict("x", 1, "", "")
    state = f[320][0]
    x = torch.randn(3, 320)
    reference = nn.Sequential(*a1111_sequence(320, f)) if activation in ("linear", "relu") else None
    comfy = comfy_sequence(f, state)
    warned = comfyui_differences(activation, layer_norm, activate_output)
    if comfy is None:
        assert warned == ["hn_comfy_activation"]
        return
    reference.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    same = torch.allclose(reference.eval()(x), comfy.eval()(x), atol=1e-6)
    assert same == (not warned), (activation, layer_norm, activate_output, warned)


def test_the_warning_in_the_log_and_on_the_page(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.i18n import Translator
    from engine.training.callbacks import Callbacks
    from engine.training.loop import train
    from webapp.wizard_logic import soft_warnings

    cfg = _job(tiny_model_dir, tiny_dataset, tmp_path, activation="gelu")
    assert any("works in A1111 only" in w for w in soft_warnings(cfg, 4, 100, "sd15"))
    assert any("只在 A1111 里可用" in w for w in soft_warnings(cfg, 4, 100, "sd15", Translator("zh")))
    assert not any("A1111" in w for w in soft_warnings(_job(tiny_model_dir, tiny_dataset, tmp_path), 4, 100,
                                                         "sd15"))

    class Log(Callbacks):
        lines: list[str] = []

        def on_log(self, message):
            self.lines.append(message)

    train(_job(tiny_model_dir, tiny_dataset, tmp_path, activation="relu", layer_norm=True), Log())
    assert any("ComfyUI also applies the activation after the last layer" in line for line in Log.lines)


def test_the_lr_note_is_for_real_models_not_the_embedded_demo():
    """The demo trains the embedded model at 1e-3 on purpose; the same rate on a real model
    gets the note that A1111 trains hypernetworks at 5e-6 .. 1e-5."""
    import tomllib

    from engine.config.job import parse_config
    from engine.methods import method_of

    job = tomllib.loads((ROOT / "presets" / "jobs" / "demo_hypernetwork.toml").read_text(encoding="utf-8"))
    method = method_of("hypernetwork")
    assert method.setup_notes(parse_config(job)) == []
    job["model"]["base"] = "some/sd15-model"
    assert "may overshoot on a real model" in method.setup_notes(parse_config(job))[0]
