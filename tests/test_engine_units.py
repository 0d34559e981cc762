"""Pure pieces of the engine: losses, optimizers and schedules, captions, dataset scanning."""
from __future__ import annotations

import random

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from engine.config.job import OptimizerConfig, SchedulerConfig
from engine.data.captions import process_caption
from engine.data.folder import DatasetError, scan_dataset
from engine.training.losses import diffusion_loss, min_snr_weights, offset_noise, training_target
from engine.training.optim import OptimizerUnavailable, build_optimizer, build_scheduler, param_groups

SCHED = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_min_snr_weights_match_the_formula():
    t = torch.tensor([1, 50, 500, 999])
    alphas = SCHED.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    eps = min_snr_weights(SCHED, t, 5.0, "epsilon")
    v = min_snr_weights(SCHED, t, 5.0, "v_prediction")
    torch.testing.assert_close(eps, torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(v, torch.clamp(snr, max=5.0) / (snr + 1))
    assert eps[0] < 0.01 and eps[-1] == 1.0  # low-noise steps down-weighted, high-noise untouched


def test_v_prediction_target_and_epsilon_target():
    lat, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(SCHED, lat, noise, t, "epsilon"), noise)
    a = SCHED.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - SCHED.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(SCHED, lat, noise, t, "v_prediction"), a * noise - s * lat)
    with pytest.raises(ValueError):
        training_target(SCHED, lat, noise, t, "sample2")


def test_offset_noise_shifts_channels_per_sample():
    lat = torch.zeros(64, 4, 16, 16)
    plain = offset_noise(lat, 0.0, torch.Generator().manual_seed(0))
    shifted = offset_noise(lat, 0.5, torch.Generator().manual_seed(0))
    per_channel_mean_var = shifted.mean(dim=(2, 3)).var().item()
    assert per_channel_mean_var > 0.15 > plain.mean(dim=(2, 3)).var().item()


def test_weighted_loss():
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert diffusion_loss(pred, target).item() == 1.0
    assert diffusion_loss(pred, target, torch.tensor([0.0, 1.0])).item() == 0.5


@pytest.mark.parametrize("name", ["AdamW", "Adafactor", "Lion", "Prodigy"])
def test_each_optimizer_steps(name):
    p = torch.nn.Parameter(torch.ones(4))
    cfg = OptimizerConfig(type=name, lr=1.0 if name == "Prodigy" else 1e-2)
    opt = build_optimizer(cfg, param_groups([p], [], cfg), "cpu")
    (p ** 2).sum().backward()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(4))


def test_8bit_adam_refused_on_cpu_with_reason():
    cfg = OptimizerConfig(type="AdamW8bit")
    with pytest.raises(OptimizerUnavailable, match="needs an NVIDIA GPU"):
        build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.ones(1))]}], "cpu")


def test_separate_learning_rates():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    groups = param_groups([a], [b], OptimizerConfig(lr=1e-4, unet_lr=2e-4, text_encoder_lr=5e-5))
    assert [g["lr"] for g in groups] == [2e-4, 5e-5]


@pytest.mark.parametrize("kind, at_step, expected", [
    ("constant", 50, 1.0),
    ("constant_with_warmup", 5, 0.5),
    ("constant_with_warmup", 50, 1.0),
    ("linear", 55, 0.5),        # warmup 10, then linear to 0 at 100
    ("cosine", 55, 0.5),
    ("cosine_with_restarts", 55, 0.5),
    ("polynomial", 55, 0.5),    # power 1 == linear
])
def test_schedules(kind, at_step, expected):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    warm = 0 if kind == "constant" else 10
    sched = build_scheduler(SchedulerConfig(type=kind, warmup_steps=warm), opt, total_steps=100)
    for _ in range(at_step):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(expected, abs=1e-6)


def test_restarts_come_back_up():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched = build_scheduler(SchedulerConfig(type="cosine_with_restarts", num_cycles=2), opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[49] < 0.01 and lrs[50] == pytest.approx(1.0)


def test_caption_shuffle_keeps_leading_tokens_and_dropout():
    rng = random.Random(0)
    cap = "zkz, 1girl, red hair, smile, outdoors"
    seen = {process_caption(cap, rng, shuffle=True, keep_tokens=1) for _ in range(30)}
    assert len(seen) > 1 and all(s.startswith("zkz, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(cap.split(", ")) for s in seen)
    assert process_caption(cap, rng) == cap
    drops = sum(process_caption(cap, rng, dropout_rate=0.5) == "" for _ in range(400))
    assert 150 < drops < 250


def test_tag_dropout_never_drops_kept_tokens_and_is_seeded():
    import random

    cap = "zkz, a, b, c, d, e, f, g, h, i, j"
    out = [process_caption(cap, random.Random(3), keep_tokens=1, tag_dropout_rate=0.3) for _ in range(2)]
    assert out[0] == out[1]  # same seed, same caption
    rng = random.Random(0)
    kept = [process_caption(cap, rng, keep_tokens=1, tag_dropout_rate=0.3).split(", ") for _ in range(300)]
    assert all(k[0] == "zkz" and k[1:] == sorted(k[1:]) for k in kept)  # order kept without shuffle
    mean_dropped = sum(11 - len(k) for k in kept) / 300
    assert 2.4 < mean_dropped < 3.6  # 10 droppable tags x 0.3


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)


def test_scan_repeats_folders_captions_and_fallbacks(tmp_path):
    _img(tmp_path / "10_my char" / "a.png")
    (tmp_path / "10_my char" / "a.txt").write_text("my char, smile\n")
    _img(tmp_path / "10_my char" / "b.jpg")  # no caption: kohya falls back to the concept name
    _img(tmp_path / "2_style" / "c.webp")
    (tmp_path / "2_style" / "c.caption").write_text("painting")
    (tmp_path / "notes").mkdir()
    (tmp_path / "2_style" / "readme.txt").write_text("not an image")
    idx = scan_dataset(tmp_path)
    assert [(s.name, s.repeats, len(s.items)) for s in idx.subsets] == [("10_my char", 10, 2), ("2_style", 2, 1)]
    assert [it.caption for it in idx.items] == ["my char, smile", "my char", "painting"]
    assert idx.num_train_images == 22 and len(idx.epoch_items()) == 22
    assert idx.tag_frequency()["10_my char"] == {"my char": 2, "smile": 1}


def test_scan_flat_folder_uses_default_repeats(tmp_path):
    _img(tmp_path / "x.png")
    idx = scan_dataset(tmp_path, default_repeats=5)
    assert idx.num_train_images == 5 and idx.items[0].caption == ""


def test_scan_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no images found"):
        scan_dataset(tmp_path)


@pytest.mark.parametrize("text, word, expected", [
    ("zkz, a star on a white background", "zkz", "a star on a white background"),
    ("a star, zkz, on white", "zkz", "a star, on white"),
    ("zkzstar and zkz_2 stay", "zkz", "zkzstar and zkz_2 stay"),   # whole words only
    ("my trigger here, trigger", "my trigger", "here, trigger"),
    ("a.b c", "a.b", "c"),                                          # no regex in a trigger
    ("nothing to take", "", "nothing to take"),
])
def test_without_word_takes_whole_words_and_tidies_commas(text, word, expected):
    from engine.data.words import has_word, without_word

    assert without_word(text, word) == expected
    assert has_word(text, word) == (expected != text)


@pytest.mark.parametrize("prompt, trigger, expected", [
    ("zkz, purple star, on white", "zkz, purple", "star, on white"),   # each word of the phrase
    ("zkz purple star", "zkz", "purple star"),
    ("a purple zkz star", "zkz, purple", "a star"),                    # words apart in the prompt
    ("a star", "zkz, purple", ""),                                     # no trigger: no control prompt
    ("zkz star", " , ", ""),
])
def test_the_control_prompt_drops_every_word_of_a_trigger_phrase(prompt, trigger, expected):
    """The Compare tab's control prompt, the card's control prompts and the prior images split a
    comma phrase the same way: each word goes, not only the whole phrase."""
    from engine.data.words import trigger_words, without_words
    from webapp.compare import without_trigger

    assert without_trigger(prompt, trigger) == expected
    if expected:
        assert without_words(prompt, trigger_words(trigger)) == expected
