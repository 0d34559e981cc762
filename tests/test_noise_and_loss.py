"""Noise and loss options (kohya sd-scripts' names): each one does what its paper says, a job
without them draws exactly the random numbers it always did, and a trained file records them
under sd-scripts' keys and shows them on its card."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_job

from engine.models.toy import SCHEDULE
from engine.training.losses import (
    debiased_weights,
    diffusion_loss,
    elementwise_loss,
    huber_threshold,
    noisy_input,
    pyramid_noise,
    sample_timesteps,
    training_target,
    zero_terminal_snr,
)


def toy_scheduler(prediction_type: str = "epsilon"):
    """The tiny test models' schedule (SD's scaled-linear betas, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(prediction_type=prediction_type, **SCHEDULE)


def coarse_power(noise: torch.Tensor, size: int = 32) -> float:
    """Variance of the noise averaged over size x size blocks, times size^2: 1 for white noise."""
    return F.avg_pool2d(noise, size).var().item() * size * size


def test_multires_noise_carries_coarse_structure_at_unit_variance():
    torch.manual_seed(0)
    white = torch.randn(8, 4, 64, 64)
    pyramid = pyramid_noise(white, iterations=8, discount=0.3)
    assert abs(pyramid.std().item() - 1) < 1e-4
    # white noise averages out over 32x32 blocks; the pyramid's coarse levels do not
    assert coarse_power(white) == pytest.approx(1, rel=0.15)
    assert coarse_power(pyramid) > 2 * coarse_power(white), coarse_power(pyramid)
    powers = [coarse_power(pyramid_noise(white, iterations=8, discount=d)) for d in (0.1, 0.3, 0.8)]
    assert powers == sorted(powers) and powers[-1] > 20, powers


def test_input_perturbation_moves_the_input_and_keeps_the_target():
    sched = toy_scheduler()
    torch.manual_seed(1)
    latents, noise, extra = torch.randn(3, 4, 4, 8, 8).unbind(0)
    timesteps = torch.tensor([10, 500, 990, 250])
    plain = noisy_input(sched, latents, noise, timesteps, 0.0, extra)
    perturbed = noisy_input(sched, latents, noise, timesteps, 0.1, extra)
    assert torch.equal(plain, sched.add_noise(latents, noise, timesteps))
    # the input moved by gamma * extra along the noise direction, scaled as the noise is
    sigma = (1 - sched.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose((perturbed - plain) / sigma, 0.1 * extra, atol=1e-5)
    # the target is the noise the model should find, unperturbed
    assert torch.equal(training_target(sched, latents, noise, timesteps, "epsilon"), noise)


def test_zero_terminal_snr_makes_the_last_timestep_pure_noise():
    base = toy_scheduler("v_prediction")
    rescaled = zero_terminal_snr(base)
    assert base.alphas_cumprod[-1] > 1e-3 and rescaled.alphas_cumprod[-1] < 1e-12
    assert rescaled.config.prediction_type == "v_prediction"
    torch.manual_seed(2)
    latents, noise = torch.randn(2, 16, 4, 8, 8).unbind(0)
    last = torch.full((16,), 999)

    # the base's last step still holds a trace of the image; the rescaled one is the noise itself
    assert not torch.allclose(base.add_noise(latents, noise, last), noise, atol=1e-2)
    assert torch.allclose(rescaled.add_noise(latents, noise, last), noise, atol=1e-5)
    # early timesteps barely change
    assert abs(rescaled.alphas_cumprod[0] - base.alphas_cumprod[0]) < 1e-3


def test_debiased_estimation_weights_low_noise_timesteps_less():
    sched = toy_scheduler()
    t = torch.tensor([1, 50, 200, 500, 900, 999])
    w = debiased_weights(sched, t, "epsilon")
    assert torch.all(w[1:] > w[:-1]), w
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert torch.allclose(w, 1 / snr.clamp(max=1000).sqrt())
    v = debiased_weights(sched, t, "v_prediction")
    assert torch.allclose(v, 1 / (snr.clamp(max=1000) + 1)) and torch.all(v <= 1)


def test_huber_is_squared_for_small_errors_and_bounds_an_outliers_pull():
    c = torch.tensor([0.1])
    small = torch.full((1, 1, 1, 4), 0.01)
    assert torch.allclose(elementwise_loss(small, torch.zeros_like(small), "huber", c), small ** 2, rtol=0.01)
    # one batch, one image far off (an outlier): its share of the gradient
    target = torch.zeros(2, 4, 8, 8)
    target[1] = 5.0

    def outlier_share(loss_type: str) -> float:
        pred = torch.zeros_like(target, requires_grad=True)
        threshold = torch.full((2,), 0.1)
        (diffusion_loss(pred, target + 0.1, None, loss_type, threshold)).backward()
        g = pred.grad.flatten(1).norm(dim=1)
        return (g[1] / g[0]).item()

    assert outlier_share("l2") == pytest.approx(51, rel=0.01)  # 5.1 / 0.1: the pull grows with the error
    assert outlier_share("huber") < 2.5 and outlier_share("smooth_l1") < 2.5  # bounded
    assert outlier_share("l1") == pytest.approx(1.0)


def test_huber_schedules_follow_the_noise_level():
    sched = toy_scheduler()
    t = torch.tensor([0, 250, 500, 999])
    snr = huber_threshold(sched, t, "snr", 0.1)
    assert snr[0] > 0.9 and torch.all(snr[1:] < snr[:-1]) and torch.all(snr >= 0.1), snr
    exp = huber_threshold(sched, t, "exponential", 0.1, scale=2.0)
    assert exp[0] == pytest.approx(2.0) and exp[-1] == pytest.approx(0.2, rel=0.01)
    assert torch.all(huber_threshold(sched, t, "constant", 0.1, scale=2.0) == 0.2)


def test_timestep_range_and_unchanged_default_draws():
    sched = toy_scheduler()
    torch.manual_seed(3)
    ranged = sample_timesteps(4000, 200, 400, sched, torch.device("cpu"))
    assert ranged.min() == 200 and ranged.max() == 399
    # the defaults draw what training always drew (a resumed run stays exact)
    torch.manual_seed(4)
    default = sample_timesteps(64, 0, 1000, sched, torch.device("cpu"))
    torch.manual_seed(4)
    assert torch.equal(default, torch.randint(0, 1000, (64,)))


def test_job_rules_for_the_options():
    from engine.config.base import ConfigError
    from engine.config.job import parse_config

    base = lora_job("m", "d", "o")
    with pytest.raises(ConfigError) as err:
        parse_config(lora_job("m", "d", "o", training={"noise_offset": 0.05, "multires_noise_iterations": 6}))
    assert err.value.problems[0]["cause"].key == "cfg_noise_both"
    with pytest.raises(ConfigError) as err:
        parse_config(lora_job("m", "d", "o", training={"min_timestep": 500, "max_timestep": 500}))
    assert err.value.problems[0]["cause"].key == "cfg_timestep_range"
    assert parse_config(base).training.loss_type == "l2"


def test_a_trained_file_records_the_options_and_its_card_shows_them(tiny_model_dir, tiny_dataset, tmp_path):
    """Every option on at once, on the tiny model as a v-prediction model (zero terminal SNR needs
    one); the same job with the options off trains to a different loss from the same seed."""
    from safetensors import safe_open

    from engine.config.job import parse_config
    from engine.export.card_facts import gather_facts
    from engine.training.loop import train

    options = {"multires_noise_iterations": 6, "multires_noise_discount": 0.2, "ip_noise_gamma": 0.1,
               "zero_terminal_snr": True, "debiased_estimation_loss": True, "loss_type": "huber",
               "huber_schedule": "exponential", "huber_c": 0.2, "min_timestep": 100, "max_timestep": 900}
    v_model = {"base": str(tiny_model_dir), "local_files_only": True, "prediction_type": "v_prediction"}

    def run(name, training):
        job = parse_config(lora_job(tiny_model_dir, tiny_dataset, tmp_path / name, model=v_model,
                                    training={"epochs": 1, "max_steps": 3, "batch_size": 2, "seed": 1, **training}))
        return train(job), job

    (on, job), (off, _) = run("on", options), run("off", {})
    assert all(torch.isfinite(torch.tensor(on.losses))) and on.losses != off.losses
    with safe_open(on.final_path, "pt") as f:
        meta = f.metadata()
    assert {k: meta[k] for k in ("ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_ip_noise_gamma",
                                 "ss_zero_terminal_snr", "ss_debiased_estimation", "ss_loss_type",
                                 "ss_huber_schedule", "ss_huber_c", "loraforge_timestep_range")} == {
        "ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.2", "ss_ip_noise_gamma": "0.1",
        "ss_zero_terminal_snr": "True", "ss_debiased_estimation": "True", "ss_loss_type": "huber",
        "ss_huber_schedule": "exponential", "ss_huber_c": "0.2", "loraforge_timestep_range": "100-900"}
    with safe_open(off.final_path, "pt") as f:
        plain = f.metadata()
    assert plain["ss_loss_type"] == "l2" and plain["ss_multires_noise_iterations"] == "None"
    # the card, from the file alone (as for a file someone shared) and from the run's job
    expected = {"multiresNoiseIterations": 6, "multiresNoiseDiscount": 0.2, "ipNoiseGamma": 0.1,
                "zeroTerminalSnr": True, "debiasedEstimationLoss": True, "lossType": "huber",
                "huberSchedule": "exponential", "huberC": 0.2, "huberScale": 1.0, "minTimestep": 100,
                "maxTimestep": 900}
    for facts in (gather_facts(on.final_path), gather_facts(on.final_path, job)):
        assert {k: facts.params.get(k) for k in expected} == expected, facts.params
    assert not {k for k in gather_facts(off.final_path).params if k in expected}


def test_zero_terminal_snr_on_an_epsilon_model_is_refused_before_any_work(tiny_model_dir, tiny_dataset, tmp_path):
    from engine.config.job import parse_config
    from engine.i18n import Explained
    from engine.training.loop import train

    job = lora_job(tiny_model_dir, tiny_dataset, tmp_path / "o", training={"zero_terminal_snr": True})
    with pytest.raises(Explained) as err:
        train(parse_config(job))
    assert err.value.key == "setup_ztsnr_epsilon" and "v-prediction" in str(err.value)
    assert not list((tmp_path / "o").glob("*.safetensors"))
