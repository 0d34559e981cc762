"""EMA of the trained weights: the saved file is the moving average of the weights each step
trained (recomputed here from the weights themselves), training is untouched by it, the file
says so, and a resumed run ends with the same average as an unbroken one."""
from __future__ import annotations

import torch
from conftest import lora_job, stop_at
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config.job import parse_config
from engine.models.loader import load_sd_components
from engine.networks import lora
from engine.training.callbacks import Callbacks
from engine.training.loop import train

DECAY = 0.9


def _job(tiny_model_dir, tiny_dataset, out, **training):
    return lora_job(tiny_model_dir, tiny_dataset, out, network={"dim": 4, "alpha": 2.0, "train_unet_only": True},
                    training={"epochs": 2, "batch_size": 2, "seed": 1, **training})


class Recorder(Callbacks):
    """The LoRA weights after every optimizer step, read from the model being trained."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def lora_params(self):
        return [p for n, p in self.model.unet.named_parameters() if "lora_" in n]

    def on_step(self, info):
        self.steps.append([p.detach().clone() for p in self.lora_params()])


def expected_average(steps: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """The average as defined (diffusers' EMAModel warm-up): at optimizer step n the decay is
    min(decay, n / (n + 9)) for n >= 2, and 0 at the first step (the average starts there)."""
    average = [w.clone() for w in steps[0]]
    for n, weights in enumerate(steps[1:], 2):
        d = min(decay, n / (n + 9))
        average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
    return average


def test_the_file_is_the_moving_average_and_training_is_untouched(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.export.card_facts import gather_facts

    model = load_sd_components(str(tiny_model_dir))
    rec = Recorder(model)
    cfg = parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path / "ema", ema=True, ema_decay=DECAY))
    result = train(cfg, rec, model=model)
    plain = train(parse_config(_job(tiny_model_dir, tiny_dataset, tmp_path / "plain")))
    assert result.losses == plain.losses  # the average never feeds back into training
    raw_now = [p.detach().clone() for p in rec.lora_params()]
    assert all(torch.equal(a, b) for a, b in zip(raw_now, rec.steps[-1]))  # the model keeps its own weights

    with torch.no_grad():  # what the file should hold: the average, in the file's keys
        for p, value in zip(rec.lora_params(), expected_average(rec.steps, DECAY)):
            p.copy_(value)
    want = lora.kohya_state_dict(model.unet, lora.UNET_PREFIX)
    got, raw_file = load_file(str(result.final_path)), load_file(str(plain.final_path))
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key].float(), rtol=1e-5, atol=1e-6)
    moved = max((got[k] - raw_file[k]).abs().max().item() for k in got if "lora_up" in k)
    assert moved > 1e-4, moved  # and it is not just the last step's weights
    with safe_open(str(result.final_path), "pt") as f:
        assert f.metadata()["loraforge_ema_decay"] == str(DECAY)
    for facts in (gather_facts(result.final_path), gather_facts(result.final_path, cfg)):
        assert facts.params["emaDecay"] == DECAY


def test_resume_keeps_the_average(tiny_model_dir, tiny_dataset, tmp_path):
    data = _job(tiny_model_dir, tiny_dataset, tmp_path / "broken", ema=True, ema_decay=DECAY)
    data["output"] |= {"save_state": True}
    unbroken = load_file(str(train(parse_config({**data, "output": {**data["output"],
                                                                    "dir": str(tmp_path / "whole")}})).final_path))
    token, stop_at_4 = stop_at(4)
    assert train(parse_config(data), stop_at_4, token).steps == 4
    resumed = load_file(str(train(parse_config(data), resume="auto").final_path))
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_a_full_fine_tune_saves_its_average(tiny_model_dir, tiny_dataset, tmp_path):
    def run(name, **training):
        job = _job(tiny_model_dir, tiny_dataset, tmp_path / name, epochs=1, **training)
        job["network"] = {"type": "dreambooth", "train_text_encoder": False}
        return train(parse_config(job)).final_path

    averaged, plain = run("ema", ema=True, ema_decay=DECAY), run("plain")
    with safe_open(str(averaged), "pt") as f:
        assert f.metadata()["loraforge_ema_decay"] == str(DECAY)
    a, b = load_file(str(averaged)), load_file(str(plain))
    unet = [k for k in a if k.startswith("model.diffusion_model.")]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in unet) > 0

