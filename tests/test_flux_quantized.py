"""training.quantize_base: Flux's frozen transformer in int8 / NF4 through bitsandbytes, with the
LoRA trained on top, on the tiny Flux. bitsandbytes runs its quantized layers on a CPU too, so the
real library does the real quantization here; only the speed and the GPU memory are not measured
(the memory is predicted, test_vram). Stop and Resume on a quantized base: test_flux."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_job
from safetensors.torch import load_file
from test_flux import _fixed_noise_losses, flux_job

from engine.demo.learning import PURPLE_CROSS


@pytest.fixture(scope="module")
def flux_data(tmp_path_factory):
    return PURPLE_CROSS.write(tmp_path_factory.mktemp("flux-q-data"), repeats=2)


def _denoise(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, sigmas = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.7])
    hidden, pooled = torch.randn(2, 16, 32, generator=g), torch.randn(2, 32, generator=g)
    with torch.no_grad():
        return model.unet(x, sigmas, hidden, {"pooled_projections": pooled}).sample


@pytest.mark.parametrize("kind, tolerance", [("nf4", 0.05), ("int8", 0.01)])
def test_quantizing_replaces_the_block_linears_and_keeps_the_output(tiny_flux_dir, kind, tolerance):
    from torch import nn

    from engine.models import flux
    from engine.models.loader import load_sd_components
    from engine.models.quantize import block_linears, is_quantized, quantize_blocks

    model = load_sd_components(str(tiny_flux_dir), local_files_only=True)
    transformer = model.unet.transformer
    before = _denoise(model)
    n = len(block_linears(transformer, flux.TRANSFORMER_BLOCKS))
    done = quantize_blocks(transformer, flux.TRANSFORMER_BLOCKS, kind, torch.float32, torch.device("cpu"))
    assert n > 0 and block_linears(transformer, flux.TRANSFORMER_BLOCKS) == [] and is_quantized(transformer)
    assert done.after < done.before / (6 if kind == "nf4" else 3)
    assert type(transformer.x_embedder) is nn.Linear and type(transformer.proj_out) is nn.Linear  # in/out kept
    after = _denoise(model)
    assert 0 < ((after - before).norm() / before.norm()).item() < tolerance


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_lora_trained_on_a_quantized_base_works_on_the_full_base(tiny_flux_dir, flux_data, tmp_path, kind):
    """The QLoRA premise, measured: trained against the quantized transformer, the file has every
    module of a full-precision run and lowers the loss of the full-precision base."""
    from engine.config.job import parse_config
    from engine.models.loader import load_sd_components
    from engine.networks.flux_lora import file_modules
    from engine.training.callbacks import Callbacks
    from engine.training.loop import train

    logs: list[str] = []

    class Log(Callbacks):
        def on_log(self, message: str) -> None:
            logs.append(message)

    cfg = parse_config(flux_job(tiny_flux_dir, flux_data, tmp_path, training={"quantize_base": kind}))
    result = train(cfg, callbacks=Log())
    assert any(f"transformer blocks {kind}" in line and "T5 int8" in line for line in logs), logs
    modules = file_modules(load_sd_components(str(tiny_flux_dir), local_files_only=True).unet.transformer)
    state = load_file(str(result.final_path))
    assert set(state) == {f"{m}.{s}" for m in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    base, with_lora = _fixed_noise_losses(tiny_flux_dir, flux_data, result.final_path)
    assert with_lora < 0.95 * base, (with_lora, base)


def test_a_quantized_base_is_refused_for_a_unet_family(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.config.job import parse_config
    from engine.training.loop import train
    from engine.training.setup import SetupError

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path)
    job["training"]["quantize_base"] = "nf4"
    with pytest.raises(SetupError) as err:
        train(parse_config(job))
    assert err.value.key == "setup_quantize_family" and "Flux.1" in str(err.value)


def test_a_device_bitsandbytes_cannot_serve_is_refused_clearly(tiny_flux_dir, flux_data, tmp_path, monkeypatch):
    """Where bitsandbytes is missing (or has no kernels for this device) the job stops before
    loading anything onto the GPU, saying what to do."""
    import builtins

    from engine.config.job import parse_config
    from engine.training.loop import train
    from engine.training.setup import SetupError

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    job = flux_job(tiny_flux_dir, flux_data, tmp_path, training={"quantize_base": "int8"})
    with pytest.raises(SetupError) as err:
        train(parse_config(job))
    assert err.value.key == "setup_quantize_unavailable" and "bitsandbytes" in str(err.value), str(err.value)
    assert not list(tmp_path.glob("*.safetensors"))
