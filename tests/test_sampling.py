"""Sample images during training: kohya prompt lines, A1111 PNG text, and no effect on training."""
from __future__ import annotations

import pytest
from conftest import lora_job
from PIL import Image
from safetensors.torch import load_file

from engine.config.job import ConfigError, parse_config
from engine.generate.prompts import PromptLineError, a1111_parameters, parse_prompt_line
from engine.generate.sampler import SampleSpec

DEFAULTS = SampleSpec("", seed=42, steps=20, cfg_scale=7.0, width=512, height=512)


def test_prompt_line_flags():
    spec = parse_prompt_line("1girl, red hair --n lowres, bad hands --w 768 --h 512 --d 7 --s 28 --l 5.5",
                             DEFAULTS)
    assert (spec.prompt, spec.negative, spec.width, spec.height, spec.seed, spec.steps, spec.cfg_scale) == \
        ("1girl, red hair", "lowres, bad hands", 768, 512, 7, 28, 5.5)
    plain = parse_prompt_line("a cat", DEFAULTS)
    assert (plain.prompt, plain.seed, plain.width) == ("a cat", 42, 512)


@pytest.mark.parametrize("line, message", [
    ("--w 512", "has no prompt"),
    ("cat --x 1", "unknown flag --x"),
    ("cat --s many", "--s needs a number"),
    ("cat --w 500", "multiples of 8"),
])
def test_prompt_line_errors(line, message):
    with pytest.raises(PromptLineError, match=message):
        parse_prompt_line(line, DEFAULTS)


def test_bad_prompt_line_is_a_config_error():
    with pytest.raises(ConfigError, match=r"sample.prompts: line 2: unknown flag --q"):
        parse_config({"model": {"base": "x"}, "dataset": {"path": "d"},
                      "sample": {"prompts": ["ok", "bad --q 1"]}})


def test_sampling_every_n_steps(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.training.callbacks import Callbacks
    from engine.training.loop import train

    steps = []

    class Record(Callbacks):
        def on_sample(self, paths, epoch, step):
            steps.append((epoch, step, len(paths)))

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path, training={"epochs": 1, "batch_size": 2},
                   sample={"prompts": ["zkz star --s 2"], "every_n_steps": 4})
    train(parse_config(job), Record())
    assert steps == [(1, 4, 1)]


def test_a1111_parameters_text():
    spec = SampleSpec("a cat", negative="blurry", seed=3, steps=20, cfg_scale=7.0, width=512, height=768)
    text = a1111_parameters(spec, "euler_a", model_name="base", model_hash="0123456789abcdef",
                            lora_hashes={"mylora": "abcdef0123456789"})
    assert text == ('a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, '
                    'Size: 512x768, Model hash: 0123456789, Model: base, Lora hashes: "mylora: abcdef012345"')


def test_samples_during_training_do_not_change_the_result(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.training.callbacks import Callbacks
    from engine.training.loop import train

    seen = []

    class Record(Callbacks):
        def on_sample(self, paths, epoch, step):
            seen.append((epoch, [p.name for p in paths]))

    base = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "plain", training={"epochs": 2, "batch_size": 6})
    plain = train(parse_config(base))
    sampled_job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "sampled",
                           training={"epochs": 2, "batch_size": 6},
                           sample={"prompts": ["zkz star --d 5 --s 4", "a cat --n dog --s 3 --l 4"],
                                   "every_n_epochs": 1})
    sampled = train(parse_config(sampled_job), Record())
    assert seen == [(1, ["tiny_e000001_s000002_00.png", "tiny_e000001_s000002_01.png"]),
                    (2, ["tiny_e000002_s000004_00.png", "tiny_e000002_s000004_01.png"])]
    im = Image.open(tmp_path / "sampled" / "sample" / "tiny_e000002_s000004_01.png")
    assert im.size == (64, 64)
    assert im.text["parameters"].startswith("a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler a, "
                                            "CFG scale: 4, Seed: 42, Size: 64x64")
    a, b = load_file(str(plain.final_path)), load_file(str(sampled.final_path))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
