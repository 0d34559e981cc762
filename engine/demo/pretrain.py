"""Pretrain the embedded default base model from scratch on the synthetic shapes world.

    python -m engine.demo.pretrain --out presets/base        # about 25 minutes on 2 CPU cores

Steps: (1) draw the shapes dataset, (2) train a tiny AutoencoderKL (f=8 like SD: 64 px -> 8x8x4
latents) with its own short loop, (3) write a model folder with that VAE plus a randomly
initialised SD-architecture UNet and a small CLIP text encoder (real CLIP tokenizer), (4) train
UNet + text encoder with the engine's own full fine-tune path (``network.type = "dreambooth"``),
(5) store the result in fp16 as a diffusers folder and as a single-file checkpoint.
Deterministic for a given seed on the same machine and thread count.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.demo.shapes import write_shapes_dataset

NAME = "shapes-base"
IMAGE_SIZE = 64


def build_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # norm_num_groups=2: with one channel per group GroupNorm becomes instance norm, which wipes
    # out each channel's mean, i.e. the absolute colour of flat shapes.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 32, 64),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2,
                         sample_size=IMAGE_SIZE)


def build_unet(seed: int, cross_dim: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed + 1)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(64, 128),
        layers_per_block=1, cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def build_text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    return CLIPTextModel(CLIPTextConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=64))


def load_images(folder: Path) -> torch.Tensor:
    from engine.data.images import load_rgb, to_tensor

    return torch.stack([to_tensor(load_rgb(p)) for p in sorted(folder.glob("*.png"))])


def vae_training_images(palette: torch.Tensor, extra: int, seed: int) -> torch.Tensor:
    """The palette dataset plus ``extra`` shapes in arbitrary colours (see random_colour_image)."""
    import random

    from engine.data.images import to_tensor
    from engine.demo.shapes import random_colour_image

    rng = random.Random(seed + 17)
    more = [to_tensor(random_colour_image(rng, IMAGE_SIZE)) for _ in range(extra)]
    return torch.cat([palette, torch.stack(more)]) if more else palette


def foreground_weights(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight 1 on the background (the corner colour), 4 on the shape: flat
    backgrounds dominate plain MSE, and it is the shape's colour that has to come back right."""
    corner = images[:, :, :1, :1]
    fg = ((images - corner).abs().amax(dim=1, keepdim=True) > 0.08).float()
    return 1.0 + 3.0 * fg


def train_vae(vae, images: torch.Tensor, steps: int, seed: int, log=print) -> float:
    """Foreground-weighted reconstruction (MSE) + a tiny KL term; returns the latent scaling
    factor (1 / latent std)."""
    g = torch.Generator().manual_seed(seed)
    weights = foreground_weights(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (16,), generator=g)
        batch, w = images[idx], weights[idx]
        dist = vae.encode(batch).latent_dist
        recon = vae.decode(dist.sample(generator=g)).sample
        loss = (w * (recon - batch) ** 2).mean() / w.mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {loss.item():.5f}")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    return float(1.0 / lat.std())


def vae_colour_report(vae, seed: int) -> dict:
    """How far the VAE moves the demo's purple and the palette colours (mean hue error, degrees):
    logged during the build so a bad VAE is seen minutes in, not after the UNet."""
    import random

    from engine.data.images import to_pil, to_tensor
    from engine.demo.measure import hue_distance, mean_hue
    from engine.demo.shapes import COLOURS, DEMO_COLOUR, draw_shape

    rng = random.Random(seed + 5)
    report = {}
    with torch.no_grad():
        for name, rgb in [("demo_purple", DEMO_COLOUR), *COLOURS.items()]:
            if name == "black":
                continue
            im = draw_shape("star", rgb, (250, 250, 250), IMAGE_SIZE, rng)
            x = to_tensor(im)[None]
            y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
            a, b = mean_hue(im), mean_hue(to_pil(y))
            report[name] = None if a is None or b is None else round(hue_distance(a, b), 1)
    return report


def write_initial_model(folder: Path, vae, seed: int) -> Path:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from engine.models.clip_tokenizer import load_clip_tokenizer

    te = build_text_encoder(seed)
    unet = build_unet(seed, te.config.hidden_size)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, clip_sample=False, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def job_dict(init: Path, data: Path, out: Path, epochs: int, seed: int) -> dict:
    return {
        "model": {"base": str(init), "local_files_only": True},
        "dataset": {"path": str(data), "resolution": IMAGE_SIZE, "caption_dropout_rate": 0.1},
        "network": {"type": "dreambooth", "train_text_encoder": True, "save_diffusers": True},
        "optimizer": {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.01, "max_grad_norm": 1.0},
        "scheduler": {"type": "cosine", "warmup_steps": 100},
        "training": {"epochs": epochs, "batch_size": 32, "seed": seed, "cache_latents": True,
                     "min_snr_gamma": 5.0},
        "output": {"dir": str(out), "name": NAME, "save_every_n_epochs": 0, "save_precision": "fp32",
                   "description": "LoRA Forge's embedded default: a tiny text-to-image model of coloured "
                                  "shapes, pretrained from scratch on synthetic data."},
    }


def to_fp16_folder(src: Path, dst: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float16, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.save_pretrained(dst, safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    from engine.config import parse_config
    from engine.models.single_file import save_single_file
    from engine.progress import TqdmProgress
    from engine.trainer import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("presets/base"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-spec", type=int, default=12, help="images per (shape, colour, background)")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-extra", type=int, default=3000, help="arbitrary-colour images for the VAE")
    ap.add_argument("--epochs", type=int, default=43)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = write_shapes_dataset(tmp / "data" / "1_shapes", args.per_spec, seed=args.seed)
        images = load_images(data)
        print(f"{len(images)} training images")
        vae = build_vae(args.seed)
        vae_images = vae_training_images(images, args.vae_extra, args.seed)
        scale = train_vae(vae, vae_images, args.vae_steps, args.seed)
        vae.register_to_config(scaling_factor=scale)
        hue_errors = vae_colour_report(vae, args.seed)
        print(f"vae done in {time.time() - t0:.0f}s, scaling_factor {scale:.4f}, hue error (deg) {hue_errors}")
        init = write_initial_model(tmp / "init", vae, args.seed)
        cfg = parse_config(job_dict(init, data.parent, tmp / "out", args.epochs, args.seed))
        result = train(cfg, TqdmProgress(print_every=50))
        trained = tmp / "out" / NAME
        final = args.out / NAME
        shutil.rmtree(final, ignore_errors=True)
        to_fp16_folder(trained, final)
        from engine.models.loader import load_sd_components

        m = load_sd_components(str(final))
        save_single_file(m, args.out / f"{NAME}.safetensors", half=True,
                         metadata={"modelspec.title": NAME, "modelspec.architecture": "stable-diffusion-v1"})
        info = {"seed": args.seed, "per_spec": args.per_spec, "images": len(images),
                "vae_steps": args.vae_steps, "vae_extra_images": args.vae_extra,
                "vae_hue_error_deg": hue_errors, "epochs": args.epochs, "steps": result.steps,
                "final_loss_mean_last_50": sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
                "seconds": round(time.time() - t0), "torch_threads": torch.get_num_threads(),
                "command": " ".join(["python -m engine.demo.pretrain", *(sys.argv[1:] if argv is None else argv)])}
        (args.out / f"{NAME}.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
