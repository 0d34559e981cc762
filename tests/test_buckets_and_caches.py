"""Bucketed batches, regularization images, latent cache (memory/disk) and text-encoder output
cache, on real training runs of the tiny model."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import draw_shape_images, lora_job
from PIL import Image, ImageDraw
from safetensors import safe_open

from engine.config.job import ConfigError, parse_config
from engine.data.dataset import BucketBatchSampler, BucketOptions, TrainingSamples
from engine.data.folder import scan_dataset
from engine.training.loop import train


@pytest.fixture(scope="module")
def mixed_aspect(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    sub = root / "2_zkz"
    sub.mkdir()
    for i, (w, h) in enumerate([(64, 256), (64, 250), (256, 64), (260, 70), (128, 128), (130, 120), (192, 64)]):
        im = Image.new("RGB", (w, h), (250, 250, 250))
        ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(150, 40, 200))
        im.save(sub / f"img{i}.png")
        (sub / f"img{i}.txt").write_text("zkz, purple", encoding="utf-8")
    return root


def test_every_image_gets_a_bucket_and_the_report_matches(mixed_aspect):
    ds = TrainingSamples(scan_dataset(mixed_aspect), 128, buckets=BucketOptions(64, 256))
    b = ds.assignment.buckets
    assert len(b) == 7
    assert b["0"] == b["1"] == (64, 256) and b["2"] == (256, 64) and b["3"] == (256, 64)
    assert b["4"] == b["5"] == (128, 128) and b["6"] == (192, 64)
    report = ds.assignment.report()
    assert "7 images in 4 buckets" in report and "64x256 (aspect 0.25): 2 images" in report


def test_bucket_batches_are_homogeneous_complete_and_seeded(mixed_aspect):
    ds = TrainingSamples(scan_dataset(mixed_aspect), 128, buckets=BucketOptions(64, 256))
    keys = ds.bucket_keys()
    assert len(keys) == 14  # 7 images x 2 repeats
    sampler = BucketBatchSampler(keys, batch_size=3, seed=5)
    epoch = list(sampler)
    assert sorted(i for batch in epoch for i in batch) == list(range(14)) and len(epoch) == len(sampler)
    assert all(len({keys[i] for i in batch}) == 1 for batch in epoch)
    assert epoch != list(sampler)  # the next epoch is shuffled differently
    assert list(BucketBatchSampler(keys, 3, 5)) == epoch
    shapes = {tuple(ds[i]["pixels"].shape) for i in range(len(ds))}
    assert shapes == {(3, 256, 64), (3, 64, 256), (3, 128, 128), (3, 64, 192)}


def test_bucketed_training_runs_and_records_buckets(tmp_path, tiny_model_dir, mixed_aspect):
    cfg = parse_config(lora_job(tiny_model_dir, mixed_aspect, tmp_path, training={"epochs": 1, "batch_size": 2},
                                dataset={"resolution": 128, "enable_bucket": True,
                                         "min_bucket_reso": 64, "max_bucket_reso": 256}))
    result = train(cfg)
    assert result.steps == 7  # buckets of 4, 4, 4, 2 entries at batch 2: 2+2+2+1 batches
    with safe_open(str(tmp_path / "tiny.safetensors"), "pt") as f:
        meta = f.metadata()
    info = json.loads(meta["ss_bucket_info"])["buckets"]
    assert sorted((tuple(v["resolution"]), v["count"]) for v in info.values()) == [
        ((64, 256), 4), ((128, 128), 4), ((192, 64), 2), ((256, 64), 4)]
    assert meta["ss_enable_bucket"] == "True"


def test_cached_latents_train_to_the_same_loss(tmp_path, tiny_model_dir, tiny_dataset):
    runs = {}
    for cache in (False, True):
        cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / str(cache),
                                    training={"epochs": 2, "cache_latents": cache}))
        runs[cache] = train(cfg).losses
    assert len(runs[True]) == len(runs[False]) == 12
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_disk_cache_is_reused_and_rebuilt_when_damaged(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    monkeypatch.setenv("LORAFORGE_CACHE", str(tmp_path / "cache"))
    logs: list[str] = []

    from engine.training.callbacks import Callbacks

    class Log(Callbacks):
        def on_log(self, msg):
            logs.append(msg)

    def run(name, **dataset):  # the cache is filled before step 1; two steps show it is used
        cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / name, dataset=dataset,
                                    training={"epochs": 1, "max_steps": 2,
                                              "cache_latents_to_disk": True}))
        losses = train(cfg, Log()).losses
        return losses, [m for m in logs if m.startswith("latent cache:")][-1]

    first, msg1 = run("a")
    second, msg2 = run("b")
    assert msg1 == "latent cache: 0 reused, 4 encoded, 0 rebuilt"
    assert msg2 == "latent cache: 4 reused, 0 encoded, 0 rebuilt"
    assert first == second
    files = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 4
    files[0].write_bytes(files[0].read_bytes()[:50])  # truncated
    third, msg3 = run("c")
    assert msg3 == "latent cache: 3 reused, 1 encoded, 1 rebuilt" and third == first
    _, msg4 = run("d", resolution=128)  # another size: new entries, old ones untouched
    assert msg4 == "latent cache: 0 reused, 4 encoded, 0 rebuilt"
    assert len(list((tmp_path / "cache" / "latents").rglob("*.safetensors"))) == 8


def test_text_encoder_cache_gives_the_same_training(tmp_path, tiny_model_dir, tiny_dataset):
    runs = {}
    for cache in (False, True):
        cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / str(cache),
                                    network={"train_unet_only": True},
                                    training={"epochs": 1, "cache_text_encoder_outputs": cache,
                                              "offload_after_caching": True}))
        runs[cache] = train(cfg).losses
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    ({"network": {"train_unet_only": False}}, "frozen text encoder"),
    ({"dataset": {"shuffle_caption": True}}, "captions change every step"),
    ({"dataset": {"tag_dropout_rate": 0.1}}, "captions change every step"),
])
def test_text_encoder_cache_refuses_what_it_cannot_do(tmp_path, extra, message):
    job = lora_job(tmp_path, tmp_path, tmp_path, training={"cache_text_encoder_outputs": True},
                   network={"train_unet_only": True})
    for section, values in extra.items():
        job[section].update(values)
    with pytest.raises(ConfigError, match=message):
        parse_config(job)


def test_regularization_images_are_balanced_and_weighted(tmp_path, tiny_model_dir, tiny_dataset):
    reg = draw_shape_images(tmp_path / "reg" / "1_star", 3, colour=(30, 60, 220), caption="star")
    ds = TrainingSamples(scan_dataset(tiny_dataset), 64, reg_index=scan_dataset(reg.parent),
                         prior_loss_weight=0.5)
    weights = [ds[i]["loss_weight"] for i in range(len(ds))]
    assert weights == [1.0] * 12 + [0.5] * 12  # as many reg samples as training samples
    assert [ds[i]["caption"] for i in range(12, 24)] == ["star"] * 12
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / "out", training={"epochs": 1},
                                dataset={"reg_path": str(reg.parent), "prior_loss_weight": 0.5}))
    result = train(cfg)
    assert result.steps == 12 and all(torch.isfinite(torch.tensor(result.losses)))
    with safe_open(str(tmp_path / "out" / "tiny.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_reg_images"] == "3" and meta["ss_prior_loss_weight"] == "0.5"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_star": {"n_repeats": 1, "img_count": 3}}
