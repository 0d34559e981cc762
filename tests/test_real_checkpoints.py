"""Real-size Civitai / A1111 single-file checkpoints load with no network at all.

The files are the real SD 1.5 and SDXL base architectures with reproducible random weights,
written in the original (LDM / SGM) key layout by our own single-file writer, as fp16 like the
files people download. They load with the hub forced offline, an empty Hugging Face cache, an
empty LoRA Forge cache and every socket refused; every loaded weight equals the written one.
"""
from __future__ import annotations

import socket
import zlib
from pathlib import Path

import pytest
import torch

from engine.models.loader import load_sd_components
from engine.models.reference import ARCHITECTURES, reference_config_dir
from engine.models.single_file import to_original_state_dict

_PATTERN = 1_000_003  # a prime: no two tensors start at the same place of the pattern


def _pattern() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(_PATTERN, generator=g) * 0.02).to(torch.float16)


def fill(key: str, shape: torch.Size, pattern: torch.Tensor) -> torch.Tensor:
    """Reproducible, different for every key, made in memory-bandwidth time (no RNG per weight)."""
    n, start = int(torch.Size(shape).numel()), zlib.crc32(key.encode()) % _PATTERN
    reps = (start + n) // _PATTERN + 1
    return pattern.repeat(reps)[start:start + n].reshape(shape).clone()


def meta_components(arch: str) -> dict:
    """The architecture's modules with no memory behind them: only names and shapes."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = ARCHITECTURES[arch]
    folder = reference_config_dir(arch)
    with init_empty_weights():
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))}
        for name in ("text_encoder", "text_encoder_2"):
            if name in spec:
                config = CLIPTextConfig.from_pretrained(folder, subfolder=name)
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                parts[name] = cls(config)
    return parts


def write_checkpoint(arch: str, path: Path) -> dict[str, torch.Size]:
    from safetensors.torch import save_file

    parts = meta_components(arch)
    layout = to_original_state_dict(parts["unet"], parts["vae"], parts["text_encoder"], parts.get("text_encoder_2"))
    del parts
    pattern = _pattern()  # the weights get values; fixed tensors (token positions, logit scale) keep theirs
    save_file({k: fill(k, v.shape, pattern) if v.is_meta else v for k, v in layout.items()}, str(path),
              metadata={"format": "pt"})
    return {k: v.shape for k, v in layout.items()}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, no Hugging Face cache, no LoRA Forge cache (the reference configs are written
    afresh): exactly a new portable bundle on a machine that never went online."""
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LORAFORGE_CACHE", str(tmp_path / "lf-empty"))

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path


def _assert_loaded_equals_file(model, path: Path) -> None:
    from safetensors import safe_open

    loaded = to_original_state_dict(model.unet, model.vae, model.text_encoder, model.text_encoder_2)
    constants = ("position_ids", "logit_scale")  # written by the writer, not weights of the model
    with safe_open(str(path), "pt") as fh:
        assert set(fh.keys()) == set(loaded)
        for key in fh.keys():
            if not key.endswith(constants):
                assert torch.equal(fh.get_tensor(key), loaded[key]), key


@pytest.mark.parametrize("arch, family", [("sd15", "sd15"), ("sdxl", "sdxl")])
def test_real_size_single_file_loads_offline(offline, arch, family):
    path = offline / f"{arch}-random.safetensors"
    shapes = write_checkpoint(arch, path)
    unet_params = sum(s.numel() for k, s in shapes.items() if k.startswith("model.diffusion_model."))
    assert unet_params > (2.5e9 if family == "sdxl" else 8.5e8)  # the real sizes, not a tiny stand-in
    model = load_sd_components(str(path), local_files_only=True, dtype=torch.float16)
    assert (model.family, model.source_kind, model.prediction_type) == (family, "single_file", "epsilon")
    assert model.tokenizer.pad_token == "<|endoftext|>"
    if family == "sdxl":
        assert model.tokenizer_2.pad_token == "!" and model.vae.config.scaling_factor == 0.13025
    _assert_loaded_equals_file(model, path)
    assert not list((offline / "hf-empty").rglob("*.safetensors"))  # nothing was fetched or cached
    path.unlink()  # gigabytes; pytest keeps the folders of the last runs


# --- SD 2.x: v-prediction or epsilon, told from the weights -------------------------------------------

def trained_tiny_sd2(target: str, steps: int = 150) -> dict:
    """A tiny SD 2-style model whose UNet learned ``target`` (the noise or v) for a few steps on
    latents around 1.5, so what it predicts differs the way the two real kinds of SD 2 differ."""
    from diffusers import DDPMScheduler

    from engine.models.toy import tiny_sd15_components

    parts = tiny_sd15_components(family="sd2")
    unet, g = parts["unet"], torch.Generator().manual_seed(1)
    noise_schedule = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   prediction_type=target)
    optimizer = torch.optim.Adam(unet.parameters(), 1e-3)
    for _ in range(steps):
        x0 = 1.5 + 0.1 * torch.randn(4, 4, 8, 8, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (4,), generator=g)
        wanted = noise if target == "epsilon" else noise_schedule.get_velocity(x0, noise, t)
        context = torch.randn(4, 2, unet.config.cross_attention_dim, generator=g)
        out = unet(noise_schedule.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(out, wanted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return parts


@pytest.fixture(scope="module")
def tiny_sd2_pair():
    return {target: trained_tiny_sd2(target) for target in ("epsilon", "v_prediction")}


def test_detector_tells_v_prediction_from_epsilon(tiny_sd2_pair):
    from engine.models.loader import predicts_v

    assert not predicts_v(tiny_sd2_pair["epsilon"]["unet"])
    assert predicts_v(tiny_sd2_pair["v_prediction"]["unet"])


def test_sd2_single_file_gets_its_prediction_type(tiny_sd2_pair, offline, monkeypatch):
    """The whole path: an SD 2 single file with no config is loaded as the 512 px reference and
    switched to 768 px v-prediction when its UNet predicts v. The reference is shrunk to the tiny
    model's layer sizes (the architecture facts are the only thing replaced)."""
    from engine.models.single_file import save_single_file

    tiny = tiny_sd2_pair["epsilon"]
    monkeypatch.setitem(ARCHITECTURES, "sd2-512", {
        **ARCHITECTURES["sd2-512"], "unet": {**tiny["unet"].config, "_class_name": "UNet2DConditionModel"},
        "vae": {**tiny["vae"].config, "_class_name": "AutoencoderKL"},
        "text_encoder": {**tiny["text_encoder"].config.to_dict(), "architectures": ["CLIPTextModel"]}})
    for target, parts in tiny_sd2_pair.items():
        path = save_single_file(parts, offline / f"sd2-{target}.safetensors")
        model = load_sd_components(str(path), local_files_only=True)
        assert (model.family, model.prediction_type) == ("sd2", target)
        assert model.noise_scheduler.config.prediction_type == target
        v = target == "v_prediction"
        assert model.unet.config.sample_size == (ARCHITECTURES["sd2-768-v"]["unet"]["sample_size"] if v else
                                                 tiny["unet"].config.sample_size)
        assert any(getattr(m, "upcast_attention", False) for m in model.unet.modules()) == v
        for key, value in parts["unet"].state_dict().items():
            assert torch.equal(model.unet.state_dict()[key], value), key
