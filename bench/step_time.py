"""Per-step training time: our engine's loop vs. a plain diffusers + peft reference loop.

Both loops train the same unet-only LoRA (rank 16, alpha 8, on exactly the modules
``engine.networks.lora.unet_targets`` picks; asserted after each round) on the same synthetic
dataset: fp32, batch 1, cached VAE latents, frozen text encoder run under no_grad on the caption
every step, DDPM ``add_noise``, MSE against the noise, AdamW (lr 1e-4, wd 0.01), grad-norm clip
1.0. Any extra per-step work our loop does (accelerate wrappers, caption processing, LR
scheduler, callbacks, DataLoader) is part of what we measure.

(A) ``engine.training.loop.train`` with an in-memory ``LoadedModel``; a step is the
    ``time.perf_counter()`` span from the loop resuming after one ``on_step`` to the next.
(B) ``reference_loop`` below; a step is its whole loop body (batch pick to loss read-out).

``--interleave step`` (default): B is a generator and one B step runs inside each ``on_step``
of A, outside A's timed span, so they alternate A, B, A, B, ... step by step and bursts of load
from other processes hit both alike (on 2 shared cores a neighbour can make whole runs 10x
slower). ``--interleave run`` alternates whole runs instead. Each round starts from fresh
deep copies of a pristine UNet (VAE and text encoder are frozen and shared); its first
``--warmup`` steps are dropped and the median of the rest is its s/step. We report every
round's ratio A/B and their median.

Sizes: ``tiny`` = the toy SD1.5 of ``engine.models.toy`` at its native 64 px; ``sd15`` = a
randomly initialised real-size SD1.5 (UNet, CLIP-L text encoder, VAE) at 256 px. Both give
32x32 latents.

    python bench/step_time.py --size tiny --steps 30 --warmup 3
    python bench/step_time.py --size sd15 --steps 4 --warmup 2 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from engine.config.job import parse_config  # noqa: E402
from engine.methods.lora import LoraNetworkConfig  # noqa: E402
from engine.models.loader import LoadedModel  # noqa: E402
from engine.models.toy import SCHEDULE, tiny_sd15_components  # noqa: E402
from engine.networks import lora  # noqa: E402
from engine.training.callbacks import Callbacks  # noqa: E402
from engine.training.loop import train  # noqa: E402

RANK, ALPHA, LR, WEIGHT_DECAY, MAX_GRAD_NORM = 16, 8.0, 1e-4, 0.01, 1.0
DEFAULTS = {"tiny": dict(steps=30, warmup=3, rounds=2), "sd15": dict(steps=4, warmup=2, rounds=2)}
RESOLUTION = {"tiny": 64, "sd15": 256}


def real_size_sd15(seed: int) -> dict:
    """SD 1.5's published architecture with random weights (no download)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77, projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    return {"unet": unet, "vae": vae, "text_encoder": te.eval(), "tokenizer": load_clip_tokenizer(),
            "scheduler": DDPMScheduler(**SCHEDULE)}


def make_dataset(root: Path, resolution: int, n_images: int, repeats: int) -> list[tuple[Path, str]]:
    """kohya layout ``<repeats>_bench/img_i.png`` + ``img_i.txt``; smooth random colour fields."""
    folder = root / f"{repeats}_bench"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n_images):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((resolution, resolution), Image.Resampling.BICUBIC)
        path = folder / f"img_{i}.png"
        img.save(path)
        caption = f"zkz bench, sample {i}, colourful, abstract, soft gradient"
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
        items.append((path, caption))
    return items


def trained_modules(unet: torch.nn.Module) -> tuple[list[str], int]:
    """Names of the LoRA-wrapped modules and the trainable parameter count (to check A == B)."""
    return (sorted(lora.lora_layers(unet)),
            sum(p.numel() for p in unet.parameters() if p.requires_grad))


def reference_loop(base: dict, items: list[tuple[Path, str]], total: int, targets: list[str]):
    """(B) plain diffusers + peft LoRA training, as a generator: the first ``next()`` does the
    setup and yields the trained-module summary; each later one runs one step and yields its
    duration in seconds."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    vae, te, tok = base["vae"], base["text_encoder"], base["tokenizer"]
    with torch.no_grad():  # latent cache, as cache_latents does
        latents = []
        for path, _ in items:
            arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            px = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
            latents.append(vae.encode(px).latent_dist.sample() * vae.config.scaling_factor)
    captions = [c for _, c in items]
    sched = DDPMScheduler(**SCHEDULE)
    unet = copy.deepcopy(base["unet"]).requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, init_lora_weights=True,
                                target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    unet.train()
    te.eval()
    order = torch.randperm(len(items) * math.ceil(total / len(items))) % len(items)
    yield trained_modules(unet)

    for i in order[:total].tolist():
        t0 = time.perf_counter()
        lat = latents[i]
        noise = torch.randn_like(lat)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],))
        noisy = sched.add_noise(lat, noise, t)
        with torch.no_grad():
            ids = tok([captions[i]], padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            hidden = te(ids)[0]
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        yield time.perf_counter() - t0


class Timer(Callbacks):
    """(A)'s step = from the moment the loop resumes after ``on_step`` to its next ``on_step``.
    With ``interleave`` one reference step runs inside each ``on_step``, outside (A)'s timing."""

    def __init__(self, interleave=None) -> None:
        self.interleave, self.a, self.b = interleave, [], []

    def on_start(self, total_steps: int) -> None:
        self.resume = time.perf_counter()

    def on_step(self, info) -> None:
        self.a.append(time.perf_counter() - self.resume)
        if self.interleave is not None:
            self.b.append(next(self.interleave))
        self.resume = time.perf_counter()


def run_engine(base: dict, data_dir: Path, out_dir: Path, resolution: int, total: int, seed: int,
               timer: Timer) -> tuple[list[str], int]:
    """(A) engine.training.loop.train on a fresh copy of the base UNet."""
    from diffusers import DDPMScheduler

    cfg = parse_config({
        "model": {"base": "in-memory", "family": "sd15", "local_files_only": True},
        "dataset": {"path": str(data_dir), "resolution": resolution},
        "network": {"dim": RANK, "alpha": ALPHA, "train_unet_only": True},
        "optimizer": {"type": "AdamW", "lr": LR, "weight_decay": WEIGHT_DECAY,
                      "max_grad_norm": MAX_GRAD_NORM},
        "training": {"epochs": 1, "max_steps": total, "batch_size": 1, "mixed_precision": "no",
                     "gradient_checkpointing": False, "cache_latents": True, "seed": seed},
        "output": {"dir": str(out_dir), "name": "bench", "save_every_n_epochs": 0,
                   "save_precision": "fp32"},
    })
    model = LoadedModel(unet=copy.deepcopy(base["unet"]), vae=base["vae"],
                        text_encoder=base["text_encoder"], tokenizer=base["tokenizer"],
                        noise_scheduler=DDPMScheduler(**SCHEDULE), family="sd15",
                        prediction_type="epsilon", source_kind="memory", name="bench", path=data_dir)
    result = train(cfg, timer, model=model)
    assert result.steps == total, f"engine ran {result.steps} steps, expected {total}"
    return trained_modules(model.unet)


def bench(size: str, steps: int, warmup: int, rounds: int, seed: int, n_images: int,
          interleave: str) -> dict:
    t0 = time.perf_counter()
    base = tiny_sd15_components(seed) if size == "tiny" else real_size_sd15(seed)
    for name in ("unet", "vae", "text_encoder"):
        base[name].requires_grad_(False)
    base["vae"].eval()
    print(f"[{size}] built base model in {time.perf_counter() - t0:.1f}s; "
          f"torch threads={torch.get_num_threads()}", flush=True)
    res, total = RESOLUTION[size], warmup + steps
    net = LoraNetworkConfig(dim=RANK, alpha=ALPHA, train_unet_only=True)
    targets = [t.name for t in lora.unet_targets(base["unet"], net)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        data_dir = Path(tmp) / "data"
        items = make_dataset(data_dir, res, n_images, math.ceil(total / n_images))
        for r in range(1, rounds + 1):
            torch.manual_seed(seed)
            ref = reference_loop(base, items, total, targets)
            mods_b = next(ref)
            if interleave == "step":  # A, B, A, B, ... step by step inside one engine run
                timer = Timer(ref)
                mods_a = run_engine(base, data_dir, Path(tmp) / f"o{r}", res, total, seed, timer)
                a, b = timer.a, timer.b
            else:  # A's whole run, then B's whole run
                timer = Timer()
                mods_a = run_engine(base, data_dir, Path(tmp) / f"o{r}", res, total, seed, timer)
                a, b = timer.a, list(ref)
            del ref, timer
            gc.collect()
            assert mods_a == mods_b, "the two loops train different LoRA modules/parameters"
            assert len(a) == len(b) == total
            a, b = a[warmup:], b[warmup:]
            ma, mb = statistics.median(a), statistics.median(b)
            rows.append({"round": r, "engine_s": ma, "reference_s": mb, "ratio": ma / mb,
                         "engine_steps_s": a, "reference_steps_s": b})
            print(f"[{size}] round {r}: engine {ma:.4f} s/step, reference {mb:.4f} s/step, "
                  f"ratio {ma / mb:.3f}", flush=True)
    return {
        "size": size, "resolution": res, "lora_modules": len(mods_a[0]),
        "lora_params": mods_a[1], "steps_timed": steps, "warmup": warmup,
        "interleave": interleave, "rounds": rows,
        "engine_median_s": statistics.median(x for r in rows for x in r["engine_steps_s"]),
        "reference_median_s": statistics.median(x for r in rows for x in r["reference_steps_s"]),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def table(results: list[dict]) -> str:
    lines = ["| size | steps timed (x rounds) | engine s/step | reference s/step | "
             "engine/reference (median; per round) |", "|---|---|---|---|---|"]
    for r in results:
        per = ", ".join(f"{x['ratio']:.3f}" for x in r["rounds"])
        lines.append(f"| {r['size']} | {r['steps_timed']} x {len(r['rounds'])} | "
                     f"{r['engine_median_s']:.4f} | {r['reference_median_s']:.4f} | "
                     f"{r['ratio_median']:.3f} ({per}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "sd15", "both"], default="tiny")
    p.add_argument("--steps", type=int, help="timed steps per run (default: tiny 30, sd15 4)")
    p.add_argument("--warmup", type=int, help="untimed first steps per run (tiny 3, sd15 2)")
    p.add_argument("--rounds", type=int, help="A,B pairs (default 2)")
    p.add_argument("--images", type=int, default=4, help="synthetic images in the dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interleave", choices=["step", "run"], default="step",
                   help="alternate A and B every step (default) or every whole run")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the full results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for size in (["tiny", "sd15"] if args.size == "both" else [args.size]):
        d = DEFAULTS[size]
        results.append(bench(size, args.steps or d["steps"], d["warmup"] if args.warmup is None
                             else args.warmup, args.rounds or d["rounds"], args.seed, args.images,
                             args.interleave))
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
