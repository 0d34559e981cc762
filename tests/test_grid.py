"""XYZ grid from a real tiny run, LoRA swapping in place, 'pick this epoch', loss curves."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.export.hashes import safetensors_file_data_hash
from engine.generate.grid import GridError, GridJob, parse_weights, run_grid


@pytest.mark.parametrize("text, expected", [
    ("0, 0.4, 0.6, 0.8, 1.0", [0.0, 0.4, 0.6, 0.8, 1.0]),
    ("0.4-1.0(+0.2)", [0.4, 0.6, 0.8, 1.0]),
    ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("1.5", [1.5]),
])
def test_parse_weights(text, expected):
    assert parse_weights(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "a, b", "1-0(+0.1)", "0-1(+0)"])
def test_parse_weights_errors(text):
    with pytest.raises(GridError):
        parse_weights(text)


@pytest.fixture(scope="module")
def grid_run(trained_lora, tiny_model_dir, tmp_path_factory):
    import engine.models.loader as loader

    calls = []
    real = loader.load_sd_components

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    loader.load_sd_components = counting
    try:
        model = loader.load_sd_components(str(tiny_model_dir))
        _, result = trained_lora
        job = GridJob(checkpoints=result.saved, prompts=["zkz star", "a red circle"],
                      weights=[0.0, 0.5, 1.0], seeds=[7], steps=4, cfg_scale=5.0, width=64, height=64)
        out = tmp_path_factory.mktemp("grid")
        grid = run_grid(model, job, out)
    finally:
        loader.load_sd_components = real
    return grid, calls, out


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_grid_dimensions_labels_and_files(grid_run):
    grid, calls, out = grid_run
    assert len(calls) == 1, "the base model must be loaded exactly once"
    assert grid.row_labels == ["epoch 1", "epoch 2", "epoch 3"]
    assert grid.col_labels == ["weight 0", "weight 0.5", "weight 1"]
    assert grid.z_labels == ["zkz star", "a red circle"]
    assert len(grid.cells) == 3 * 3 * 2 and len(grid.grids) == 2
    assert [p.name for p in grid.grids] == ["grid_00_zkz_star.png", "grid_01_a_red_circle.png"]
    sheet = Image.open(grid.grids[0])
    assert sheet.width >= 3 * 64 and sheet.height >= 3 * 64
    assert (sheet.width - 3 * 64, sheet.height - 3 * 64) == (70, 40)  # label margins
    assert "<lora:tiny-000001:0.5>" in Image.open(grid.cells[(0, 1, 0)]).text["parameters"]


def test_weight_zero_is_the_base_and_weights_matter(grid_run):
    grid, _, _ = grid_run
    for z in range(2):
        zero = [pixels(grid.cells[(r, 0, z)]) for r in range(3)]
        assert all(np.array_equal(zero[0], other) for other in zero[1:])
    final_w0, final_w1 = pixels(grid.cells[(2, 0, 0)]), pixels(grid.cells[(2, 2, 0)])
    assert np.abs(final_w0 - final_w1).max() > 0
    assert not np.array_equal(pixels(grid.cells[(0, 2, 0)]), final_w1)  # epochs differ too


def test_swapper_matches_diffusers_at_a_partial_weight(trained_lora, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    from engine.generate.lora_apply import LoraSwapper
    from engine.models.loader import load_sd_components

    _, result = trained_lora
    model = load_sd_components(str(tiny_model_dir))
    swapper = LoraSwapper(model)
    for path in result.saved:  # same structure: injected once, then tensors copied in place
        swapper.load(path)
    assert swapper.injections == 1
    swapper.set_weight(0.6)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.load_lora_weights(str(result.saved[-1]), adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[0.6])
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, 500, ctx).sample, pipe.unet(x, 500, ctx).sample,
                                   rtol=1e-4, atol=1e-5)


def test_pick_epoch_copies_tensors_and_renames(trained_lora, tmp_path):
    from engine.export.pick import pick_checkpoint

    _, result = trained_lora
    dest = pick_checkpoint(result.saved[1], tmp_path / "my_final.safetensors", preferred_weight=0.8)
    with safe_open(str(dest), "pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == "my_final" and meta["ss_picked_from"] == "tiny-000002.safetensors"
    assert meta["ss_preferred_weight"] == "0.8" and meta["ss_epoch"] == "2"
    assert safetensors_file_data_hash(dest) == meta["sshs_model_hash"]


def test_loss_curve_csv_and_png_written(trained_lora):
    cfg, result = trained_lora
    out = result.final_path.parent
    rows = list(csv.DictReader(open(out / "tiny_loss.csv")))
    assert len(rows) == 18 and rows[-1]["step"] == "18"
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses, abs=1e-6)
    png = Image.open(out / "tiny_loss.png")
    assert png.width > 300 and png.height > 200


def test_a_training_images_folder_without_images_is_an_error(trained_lora, tiny_model_dir, tmp_path):
    """Asked for a likeness figure against a folder that is missing or empty, the grid says so
    instead of quietly drawing without it."""
    from engine.i18n import Translator, describe_error
    from engine.models.loader import load_sd_components

    (tmp_path / "empty").mkdir()
    model = load_sd_components(str(tiny_model_dir))
    for folder in (tmp_path / "nowhere", tmp_path / "empty"):
        job = GridJob(checkpoints=trained_lora[1].saved[:1], prompts=["zkz star"], weights=[1.0], seeds=[7],
                      steps=2, cfg_scale=5.0, width=64, height=64, references=folder)
        with pytest.raises(GridError) as err:
            run_grid(model, job, tmp_path / "out")
        assert str(folder) in describe_error(err.value, Translator("zh")) and "没有图片" in describe_error(
            err.value, Translator("zh"))
    assert not (tmp_path / "out").exists()


def _cells(model, lora, out, drawing=None, quantize="none") -> dict:
    from engine.generate.placement import place

    if drawing is not None:
        place(model, drawing, quantize)
    job = GridJob(checkpoints=[lora], prompts=["zkz star, purple"], weights=[0.0, 1.0], steps=4, cfg_scale=5.0,
                  width=64, height=64)
    with (drawing.autocast() if drawing is not None else torch.no_grad()):
        grid = run_grid(model, job, out)
    return {k: np.asarray(Image.open(p), dtype=float) for k, p in grid.cells.items()}


@pytest.mark.parametrize("family", ["sd15", "flux1-nf4"])
def test_the_grid_draws_in_half_precision_as_on_a_gpu(family, trained_lora, tiny_model_dir, tiny_flux_dir,
                                                      tmp_path):
    """What the grid does on a GPU (engine.generate.placement), with the CPU standing in for the
    device: base parts in bf16 (a Flux run's quantized base quantized again), the VAE in fp32,
    drawn under autocast; the LoRA still applies and the cells are the fp32 cells to bf16
    precision, not NaN or black."""
    from engine.config.job import parse_config
    from engine.generate.placement import Drawing
    from engine.models.loader import load_sd_components
    from engine.training.loop import train

    if family == "sd15":
        base, lora = tiny_model_dir, trained_lora[1].final_path
    else:
        from test_flux import flux_job

        from engine.demo.learning import PURPLE_CROSS

        data = PURPLE_CROSS.write(tmp_path / "data", repeats=2)
        base = tiny_flux_dir
        lora = train(parse_config(flux_job(base, data, tmp_path / "run", training={"epochs": 1}))).final_path
    full = _cells(load_sd_components(str(base), local_files_only=True), lora, tmp_path / "fp32")
    half = _cells(load_sd_components(str(base), local_files_only=True), lora, tmp_path / "bf16",
                  Drawing(torch.device("cpu"), torch.bfloat16), "nf4" if family == "flux1-nf4" else "none")
    for key in full:
        assert np.isfinite(half[key]).all() and half[key].std() > 1.0
        # measured 0.7 (SD 1.5) and 1.5 (Flux, NF4) of 255
        assert np.abs(half[key] - full[key]).mean() < 5, (key, np.abs(half[key] - full[key]).mean())
    lora_effect = np.abs(half[(0, 1, 0)] - half[(0, 0, 0)]).mean()
    assert lora_effect > 0.5 * np.abs(full[(0, 1, 0)] - full[(0, 0, 0)]).mean(), lora_effect
