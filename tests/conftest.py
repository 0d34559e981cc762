"""Shared fixtures: a tiny SD1.5 (real architecture, random weights), a small synthetic dataset,
and one real LoRA training run that several tests inspect."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["LORAFORGE_CACHE"] = str(tmp_path_factory.mktemp("loraforge-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from engine.models.toy import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15", seed=0)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """A tiny Flux.1 [dev] folder (engine.models.toy.build_tiny_flux)."""
    from engine.models.toy import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


def green_cross_score(demo_job: str, seed: int, tmp_path_factory):
    """The shipped demo job ``demo_job`` trained with training seed ``seed`` on a green cross
    of the user's own (12 images written here), scored by engine.demo.learning."""
    from engine.demo.learning import GREEN_CROSS, train_and_score

    data = GREEN_CROSS.write(tmp_path_factory.mktemp(f"{demo_job}-cross-data"))
    return train_and_score(demo_job, seed, tmp_path_factory.mktemp(f"{demo_job}-cross"), GREEN_CROSS, data)[0]


def draw_shape_images(folder: Path, n: int, colour=(150, 40, 200), size: int = 64,
                      caption: str = "zkz star, purple") -> Path:
    """Simple structured images (a coloured disc at varying places) so a model can learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.new("RGB", (size, size), (255, 255, 255))
        cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
        r = size // 5
        ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        im.save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text(caption, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    draw_shape_images(root / "3_zkz star", 4)
    return root


def dataset_latents(model, dataset_dir: Path, n: int = 4):
    """Scaled VAE posterior means of the first ``n`` training images at 64 px."""
    import torch

    from engine.data.dataset import TrainingSamples
    from engine.data.folder import scan_dataset

    data = TrainingSamples(scan_dataset(dataset_dir), 64)
    with torch.no_grad():
        return torch.cat([model.vae.encode(data.pixels(i)[None]).latent_dist.mean
                          for i in range(n)]) * model.vae.config.scaling_factor


def fixed_loss(unet, latents, ctx, scheduler, seed=123) -> float:
    """Denoising loss at fixed noise and timesteps: a deterministic yardstick for 'learned'."""
    import torch

    g = torch.Generator().manual_seed(seed)
    losses = []
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=g)
            ts = torch.full((latents.shape[0],), t)
            noisy = scheduler.add_noise(latents, noise, ts)
            pred = unet(noisy, ts, ctx.expand(latents.shape[0], -1, -1)).sample
            losses.append(torch.nn.functional.mse_loss(pred, noise).item())
    return sum(losses) / len(losses)


def denoising_loss(model, dataset_dir: Path, prompt: str = "zkz star, purple") -> float:
    """:func:`fixed_loss` of an SD 1.x model (as it is now: LoRA, merged weights, hooks) on the
    training images, prompted through its own text encoder."""
    import torch

    from engine.models.text import encode_prompts

    with torch.no_grad():
        ctx = encode_prompts(model.tokenizer, model.text_encoder, [prompt])
    return fixed_loss(model.unet, dataset_latents(model, dataset_dir), ctx, model.noise_scheduler)


def stop_at(step: int):
    """(a StopToken, callbacks that press Stop once training reaches ``step``): Stop as a user
    presses it, between steps."""
    from engine.training.callbacks import Callbacks, StopToken

    token = StopToken()

    class StopAt(Callbacks):
        def on_step(self, info):
            if info.step == step:
                token.stop()

    return token, StopAt()


def lora_job(model_dir: Path, dataset_dir: Path, out_dir: Path, **overrides) -> dict:
    """A small, fast LoRA job on the tiny model; alpha != dim on purpose (alpha must be kept)."""
    job = {
        "model": {"base": str(model_dir), "local_files_only": True},
        "dataset": {"path": str(dataset_dir), "resolution": 64},
        "network": {"dim": 4, "alpha": 2.0},
        "optimizer": {"type": "AdamW", "lr": 2e-3},
        "training": {"epochs": 3, "batch_size": 2, "seed": 1},
        "output": {"dir": str(out_dir), "name": "tiny", "save_every_n_epochs": 1,
                   "save_precision": "fp32", "trigger_phrase": "zkz star"},
    }
    for section, values in overrides.items():
        job.setdefault(section, {}).update(values)
    return job


@pytest.fixture(scope="session")
def trained_lora(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """One real training run (3 epochs, 18 steps) shared by the inspection tests."""
    from engine.config.job import parse_config
    from engine.training.loop import train

    out = tmp_path_factory.mktemp("lora-out")
    cfg = parse_config(lora_job(tiny_model_dir, tiny_dataset, out))
    result = train(cfg)
    return cfg, result


@pytest.fixture()
def server():
    """The real web app on a free local port (gradio_client and browser tests talk to it)."""
    from webapp.server import build_app, find_free_port

    app = build_app()
    port = find_free_port("127.0.0.1", 7900)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()
