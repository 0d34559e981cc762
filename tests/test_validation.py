"""Validation loss: held-out images, fixed noise and timesteps, written into every saved file,
plotted, and shown per epoch in the grid; on the embedded model it falls and then rises as a
run is pushed to overfit two images."""
from __future__ import annotations

import csv

import pytest
import torch
from conftest import draw_shape_images, lora_job
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config.job import ConfigError, parse_config
from engine.data.folder import DatasetError, scan_dataset
from engine.data.holdout import hold_out
from engine.training.loop import train


def test_hold_out_is_seeded_and_leaves_training_images(tmp_path):
    draw_shape_images(tmp_path / "data" / "2_zkz star", 10)
    index = scan_dataset(tmp_path / "data")
    kept, held = hold_out(index, 0.2, seed=5)
    again, held_again = hold_out(index, 0.2, seed=5)
    _, other = hold_out(index, 0.2, seed=6)
    assert len(held) == 2 and kept.num_images == 8 and kept.num_train_images == 16
    assert [it.path for it in held] == [it.path for it in held_again]
    assert {it.path for it in held} != {it.path for it in other}
    assert not {it.path for it in held} & {it.path for it in kept.items}
    assert len(hold_out(index, 0.01, seed=5)[1]) == 1  # a share too small for one image still holds one out
    draw_shape_images(tmp_path / "one", 1)
    with pytest.raises(DatasetError) as err:
        hold_out(scan_dataset(tmp_path / "one"), 0.5, seed=1)
    assert err.value.key == "dataset_validation_too_few"


def test_job_rules(tmp_path):
    job = lora_job(tmp_path, tmp_path, tmp_path, dataset={"validation_split": 0.2, "validation_path": str(tmp_path)})
    with pytest.raises(ConfigError) as err:
        parse_config(job)
    assert err.value.problems[0]["cause"].key == "cfg_validation_both"
    with pytest.raises(ConfigError, match="validation_split"):
        parse_config(lora_job(tmp_path, tmp_path, tmp_path, dataset={"validation_split": 0.9}))


def test_validation_does_not_change_the_training(tiny_model_dir, tiny_dataset, tmp_path):
    """Its own generator, modes put back: the same weights and losses as without it; and the
    same validation figures when run again (fixed noise and timesteps)."""
    val = draw_shape_images(tmp_path / "val", 3, colour=(40, 160, 60), caption="zkz star, green")
    plain = train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "plain",
                                        network={"dim": 4, "alpha": 2.0, "dropout": 0.1})))
    runs = [train(parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / f"val{i}",
                                        network={"dim": 4, "alpha": 2.0, "dropout": 0.1},
                                        dataset={"validation_path": str(val)},
                                        training={"validate_every_n_steps": 4})))
            for i in range(2)]
    assert runs[0].losses == plain.losses
    a, b = load_file(str(plain.final_path)), load_file(str(runs[0].final_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].validation == runs[1].validation
    steps = [step for step, _, _ in runs[0].validation]
    assert steps == [0, 4, 6, 8, 12, 16, 18], steps  # the start, every 4 steps, and each epoch's end


def test_split_run_writes_files_curves_and_the_grid_column(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.generate.grid import GridJob, run_grid
    from engine.models.loader import load_sd_components

    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path, dataset={"validation_split": 0.25},
                                network={"dim": 4, "alpha": 2.0, "train_unet_only": True},
                                training={"cache_text_encoder_outputs": True, "offload_after_caching": True}))
    result = train(cfg)
    by_step = {step: loss for step, _, loss in result.validation}
    assert len(by_step) == 4 and by_step[0] > 0  # the base's own, then after each of 3 epochs
    from test_lora_training import documented_keys

    documented = documented_keys("Validation loss and EMA") - {"loraforge_ema_decay"}
    assert "loraforge_validation_loss" in documented and "ss_validation_split" in documented
    for path in result.saved:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert documented <= set(meta), documented - set(meta)
        assert meta["ss_num_validation_images"] == "1" and meta["ss_validation_split"] == "0.25"
        assert meta["ss_num_train_images"] == "9"  # 3 of the 4 images x 3 repeats: one is held out
        assert float(meta["loraforge_validation_loss"]) == pytest.approx(by_step[int(meta["ss_steps"])], abs=1e-6)
    from engine.export.card_facts import gather_facts

    for facts in (gather_facts(result.final_path), gather_facts(result.final_path, cfg)):
        assert facts.params["validationLoss"] == pytest.approx(result.validation[-1][2], abs=1e-6)
        assert facts.params["validationSplit"] == 0.25 and facts.params["validationImages"] == 1
    rows = list(csv.DictReader(open(tmp_path / "tiny_validation.csv", encoding="utf-8")))
    assert [int(r["step"]) for r in rows] == sorted(by_step)
    assert (tmp_path / "tiny_loss.png").stat().st_size > 0

    job = GridJob(list(result.saved), ["zkz star"], [1.0], steps=2, cfg_scale=5.0, width=64, height=64)
    grid = run_grid(load_sd_components(str(tiny_model_dir)), job, tmp_path / "grid")
    ends = [step for step, epoch, _ in result.validation if epoch > 0]  # one saved file per epoch
    lowest = min(range(3), key=lambda r: by_step[ends[r]])
    assert grid.summary.lowest_validation_row() == lowest
    assert "lowest validation loss" in grid.summary_lines[lowest]
    assert sum("lowest validation loss" in line for line in grid.summary_lines) == 1
    table = list(csv.DictReader(open(grid.summary_csv, encoding="utf-8")))
    assert [float(r["validation_loss"]) for r in table] == pytest.approx([by_step[s] for s in ends], abs=1e-6)


def test_curves_keep_validation_rows_up_to_a_resume(tmp_path):
    from engine.training.curves import CurveWriter

    first = CurveWriter(tmp_path, "run")
    first.on_start(10)
    for step in (0, 5, 10):
        first.on_validation(step, step // 5, 1.0 / (step + 1))
    resumed = CurveWriter(tmp_path, "run")
    resumed.resume_step = 5
    resumed.on_start(10)
    assert resumed.validation == [(0, 1.0), (5, pytest.approx(1.0 / 6, abs=1e-6))]
    fresh = CurveWriter(tmp_path, "run")
    fresh.on_start(10)  # a new run under the same name starts without the old rows
    assert not (tmp_path / "run_validation.csv").exists()


def test_the_train_page_plots_it():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from webapp.steps_train import loss_frame

    frame = loss_frame([0.5, 0.4], [(0, 0.6), (2, 0.45)])
    val = frame[frame.curve == "validation"]
    assert list(val.step) == [0, 2] and list(val.loss) == [0.6, 0.45]


def test_overfitting_shows_as_a_validation_loss_that_falls_then_rises(tmp_path):
    """Two training images, six held-out ones of the same concept, a high rate: the network first
    learns the purple star (validation loss falls), then copies the two images (it rises again)."""
    from engine.demo.learning import demo_job
    from engine.demo.shapes import DEMO_COLOUR, write_concept

    write_concept(tmp_path / "data" / "10_zkz", "star", DEMO_COLOUR, count=2, seed=7)
    write_concept(tmp_path / "val", "star", DEMO_COLOUR, count=6, seed=99)
    job = demo_job("demo_lora", 42, tmp_path / "out", tmp_path / "data", overrides={
        "dataset": {"validation_path": str(tmp_path / "val"), "prior_preservation": False},
        "network": {"dim": 16, "alpha": 16.0, "conv_dim": 16, "conv_alpha": 8.0},
        "optimizer": {"lr": 3e-3}, "scheduler": {"type": "constant"},  # pinned: not the demo's cosine
        "training": {"epochs": 20}, "output": {"save_every_n_epochs": 0}})
    result = train(parse_config(job))
    val = [loss for _, _, loss in result.validation]
    low = min(range(len(val)), key=val.__getitem__)
    assert 1 <= low <= len(val) // 2, val  # the best epoch is early, not the start or the end
    assert val[low] < 0.6 * val[0], val  # it learned
    assert max(val[low:]) > 1.5 * val[low] and sum(val[-3:]) / 3 > 1.2 * val[low], val  # then overfitted


@pytest.mark.parametrize("network", [
    {"type": "textual_inversion", "token": "zkzstar", "init_text": "star", "num_vectors": 2,
     "template": "subject_filewords"},
    {"type": "dreambooth", "train_text_encoder": True},
    {"type": "loha", "dim": 4, "alpha": 2.0}])
def test_other_methods_measure_it_and_write_it(network, tiny_model_dir, tiny_dataset, tmp_path):
    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, dataset={"validation_split": 0.25},
                   training={"epochs": 2, "batch_size": 3})
    job["network"] = network
    result = train(parse_config(job))
    assert [epoch for _, epoch, _ in result.validation] == [0, 1, 2]
    assert len({round(loss, 6) for _, _, loss in result.validation}) == 3  # training changes what it measures
    with safe_open(str(result.final_path), "pt") as f:
        assert float(f.metadata()["loraforge_validation_loss"]) == pytest.approx(result.validation[-1][2], abs=1e-6)
