"""The GPU memory a job needs, predicted on a CPU from one training step on fake tensors of the
real-size architecture: the weights equal the real models' sizes, the parts move the way the
settings should move them, every shipped SD 1.5 tier fits its smallest card, and doctor, the log
and Check job say it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w

from engine.config.job import parse_config
from engine.system.vram import GIB, predict_vram

ROOT = Path(__file__).resolve().parents[1]
# parameters of the released models (UNet, text encoder(s), VAE), as their model cards count them
SD15 = {"unet": 859_520_964, "te": 123_060_480, "vae": 83_653_863}
SDXL = {"unet": 2_567_463_684, "te": 123_060_480 + 694_659_840, "vae": 83_653_863}


def job(**sections) -> dict:
    base = {"model": {"base": "embedded"}, "dataset": {"path": str(ROOT / "presets/demo/zkz_star"), "resolution": 512},
            "network": {"dim": 16, "alpha": 8}, "training": {"batch_size": 1, "mixed_precision": "bf16"},
            "output": {"dir": "out", "name": "x"}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def real_size(arch: str, **sections):
    from engine.models.reference import reference_config_dir

    family = "sdxl" if arch == "sdxl" else "sd15"
    return predict_vram(parse_config(job(**sections)), reference_config_dir(arch), family)


def test_real_size_sd15_counts_the_real_weights_and_checkpointing_saves_activations():
    plain = real_size("sd15")
    # bf16 UNet + text encoder, fp32 VAE (training keeps the VAE in fp32), to 0.5%
    expected = (SD15["unet"] + SD15["te"]) * 2 + SD15["vae"] * 4
    assert abs(plain.weights - expected) / expected < 0.005, (plain.weights, expected)
    assert 0.3 * GIB < plain.activations < 3 * GIB, plain.line()
    assert plain.optimizer == 8 * plain.trainable // 8  # AdamW: two fp32 moments per trained fp32 weight
    checkpointed = real_size("sd15", training={"gradient_checkpointing": True})
    assert checkpointed.activations < plain.activations / 2, (checkpointed.line(), plain.line())
    assert checkpointed.weights == plain.weights


def test_real_size_sdxl_at_1024_counts_both_text_encoders():
    p = real_size("sdxl", dataset={"resolution": 1024}, training={"gradient_checkpointing": True})
    expected = (SDXL["unet"] + SDXL["te"]) * 2 + SDXL["vae"] * 4
    assert abs(p.weights - expected) / expected < 0.005, (p.weights, expected)
    assert 7 < p.peak_gib < 12.5, p.line()  # SDXL LoRA with checkpointing: a 12 GB card, not an 8 GB one


def embedded(**sections):
    small = {"dataset": {"resolution": 128}, "network": {"dim": 8}}
    for name, values in sections.items():
        small[name] = {**small.get(name, {}), **values}
    return predict_vram(parse_config(job(**small)))


def test_larger_settings_never_predict_less():
    base = embedded(training={"batch_size": 2})
    assert embedded(training={"batch_size": 4}).activations > base.activations
    assert embedded(training={"batch_size": 2}, dataset={"resolution": 192}).activations > base.activations
    bigger = embedded(training={"batch_size": 2}, network={"dim": 32})
    assert bigger.trainable > base.trainable and bigger.optimizer > base.optimizer and bigger.peak > base.peak
    assert embedded(training={"batch_size": 2, "mixed_precision": "no"}).peak > base.peak
    assert embedded(training={"batch_size": 2}, optimizer={"type": "AdamW8bit"}).optimizer < base.optimizer
    assert embedded(training={"batch_size": 2, "gradient_checkpointing": True}).activations < base.activations
    ema = embedded(training={"batch_size": 2, "ema": True})  # one more fp32 copy of what trains
    assert ema.optimizer - base.optimizer == base.trainable // 2 and ema.peak > base.peak
    # text encoder outputs cached and the encoders and VAE moved off the GPU: less on the device
    offloaded = embedded(training={"batch_size": 2, "cache_text_encoder_outputs": True,
                                   "offload_after_caching": True}, network={"train_unet_only": True})
    assert offloaded.weights < base.weights


# (family, reference architecture, resolution: None = the wizard's, the family's own under the
# tier, which may lower it); what no setting fits -> the
# tier whose smallest card the closest settings fit: SDXL and Flux.1 below 12 GB
FAMILIES = [("sd15", "sd15", 512), ("sd2", "sd2-768-v", 768), ("sdxl", "sdxl", 1024), ("flux1", "flux1-dev", None)]
_PREDICTED: dict = {}
DOES_NOT_FIT = {("sdxl", "4gb"): "12gb", ("sdxl", "6gb"): "12gb", ("sdxl", "8gb"): "12gb",
                ("flux1", "4gb"): "12gb", ("flux1", "6gb"): "12gb", ("flux1", "8gb"): "12gb"}


def _tier_job(tier: str, family: str, resolution: int | None):
    """A user's job of ``family`` with ``tier`` laid under it, as `--tier` does. ``resolution``
    None: as the wizard sets it, the family's own under the tier (which may lower it)."""
    from engine.config.tiers import apply_tier
    from engine.models import families

    user = job(model={"family": family}, dataset={"resolution": resolution} if resolution else {})
    user["training"].pop("mixed_precision")
    user.pop("network")
    below = {}
    if not resolution:
        user["dataset"].pop("resolution", None)
        below = {"dataset": {"resolution": families.family(family).default_resolution}}
    return parse_config(apply_tier(below, tier, user))


@pytest.mark.parametrize("family, arch, resolution", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("tier", ["4gb", "6gb", "8gb", "12gb", "16gb", "24gb+"])
def test_every_tier_fits_the_smallest_card_it_is_picked_for_in_each_family(tier, family, arch, resolution):
    """A tier's job (its family table over it, as `--tier` lays it under a job of that family)
    predicts under 90% of the smallest card the tier is picked for. Where nothing fits (SDXL and
    Flux.1 below 12 GB), the tier holds the closest settings, and they fit a larger tier's card."""
    from engine.models.reference import reference_config_dir
    from engine.system.hardware import VRAM_TIERS

    smallest = {name: low for name, low, _ in VRAM_TIERS}
    cfg = _tier_job(tier, family, resolution)
    key = (cfg.model_dump_json(exclude={"output"}), arch)  # tiers with the same job predict once
    p = _PREDICTED.get(key) or _PREDICTED.setdefault(key, predict_vram(cfg, reference_config_dir(arch), family))
    if (family, tier) in DOES_NOT_FIT:
        fits_on = DOES_NOT_FIT[family, tier]
        assert 0.9 * smallest[tier] < p.peak_gib < 0.9 * smallest[fits_on], p.line(smallest[tier])
    else:
        assert p.peak_gib < 0.9 * smallest[tier], (tier, family, p.line(smallest[tier]))


def test_a_quantized_flux_base_predicts_its_smaller_weights():
    """Flux.1 [dev] at 1024 px as the 16gb tier trains it: NF4 < int8 < the bf16 base (22 GiB of
    transformer weights, more than any consumer card), in weights and at the peak."""
    from engine.models.reference import reference_config_dir

    cfg = _tier_job("16gb", "flux1", None)
    assert cfg.dataset.resolution == 1024 and cfg.training.quantize_base == "nf4"
    p = {kind: predict_vram(cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"quantize_base": kind})}), reference_config_dir("flux1-dev"), "flux1")
         for kind in ("nf4", "int8", "none")}
    assert p["nf4"].weights < p["int8"].weights < p["none"].weights and p["none"].weights / GIB > 22
    assert p["nf4"].peak < p["int8"].peak < p["none"].peak and 0.9 * 24 < p["none"].peak_gib
    assert "nf4" in " ".join(p["nf4"].notes) and p["nf4"].trainable == p["none"].trainable


def test_doctor_job_prints_the_prediction_against_the_gpu(tmp_path, capsys):
    import launcher
    from engine.system.doctor import job_report
    from engine.system.hardware import HardwareInfo

    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(job()), encoding="utf-8")
    card = HardwareInfo(backend="cuda", gpu_name="Test GPU", vram_gib=8.0)
    report = job_report(path, info=card)
    assert "predicted GPU memory peak" in report and "of 8.0 GiB (" in report and "GiB): fits" in report, report
    small = HardwareInfo(backend="cuda", gpu_name="Test GPU", vram_gib=0.5)
    assert "does not fit" in job_report(path, info=small)
    assert launcher.main(["doctor", "--job", str(path)]) == 0
    out = capsys.readouterr().out
    assert "LoRA Forge doctor" in out and f"Job: {path}" in out and "predicted GPU memory peak" in out


def test_the_train_log_line_on_a_gpu(monkeypatch):
    import torch

    from engine.system.vram import log_line

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=6 * GIB))
    line = log_line(parse_config(job()), torch.device("cuda"))
    assert line.startswith("predicted GPU memory peak") and "of 6.0 GiB" in line and line.endswith(": fits"), line
    broken = job()
    broken["model"]["base"] = "/nowhere/model.safetensors"
    assert log_line(parse_config(broken), torch.device("cuda")).startswith("could not predict")


def test_check_job_says_it_in_the_pages_language():
    from engine.i18n import Translator
    from webapp.wizard_logic import vram_line

    cfg = parse_config(job())
    assert vram_line(cfg, vram_gib=8.0).startswith("GPU memory at the peak (predicted):")
    assert ": fits." in vram_line(cfg, vram_gib=8.0) and "does not fit" in vram_line(cfg, vram_gib=0.5)
    zh = vram_line(cfg, Translator("zh"), vram_gib=8.0)
    assert zh.startswith("显存峰值（预测）") and "放得下" in zh
