"""Pretrain the embedded default base model from scratch on the synthetic shapes world.

    python -m engine.demo.pretrain --out presets/base        # about 20 minutes on 2 CPU cores

Steps: (1) draw the shapes dataset, (2) train a tiny AutoencoderKL (f=8 like SD: 64 px -> 8x8x4
latents) with its own short loop, (3) write a model folder with that VAE plus a randomly
initialised SD-architecture UNet and a small CLIP text encoder (real CLIP tokenizer), (4) train
the UNet with the engine's own full fine-tune path (``network.type = "dreambooth"``; the text
encoder stays frozen, see job_dict), (5) store the result in fp16 as a diffusers folder and as a
single-file checkpoint.
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


# Latent channels 0-2 are pulled toward the image's 8x8-pooled RGB (x4, near the latent scale).
COLOUR_ALIGN_SCALE = 4.0


def colour_align_loss(latent_mean: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Why: without it the VAE's latent path between two colours bends through other hues (the
    midpoint of a black and a purple star decoded green), so a LoRA at weight 0.5, which lands
    between the two latents, drew a green star. Tying three latent channels to the pooled colour
    makes colour (nearly) linear in latent space, as SD's own VAE roughly is (its latents map
    to RGB nearly linearly, which is what cheap latent previews rely on)."""
    target = torch.nn.functional.avg_pool2d(images, 8) * COLOUR_ALIGN_SCALE
    return torch.nn.functional.mse_loss(latent_mean[:, :3], target)


def train_vae(vae, images: torch.Tensor, steps: int, seed: int, log=print, align_weight: float = 0.0) -> float:
    """Foreground-weighted reconstruction (MSE) + a tiny KL term + the colour alignment term;
    returns the latent scaling factor (1 / latent std)."""
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
        if align_weight:
            loss = loss + align_weight * colour_align_loss(dist.mean, batch)
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


def vae_blend_report(vae, seed: int) -> list[float]:
    """Share of purple pixels when decoding latents blended from a black star (0) to the demo's
    purple star (1) at 0, 0.25, 0.5, 0.75, 1: a LoRA at a weight between 0 and 1 lands between
    those latents, so this should rise steadily (it went through green before the alignment term)."""
    import random

    from engine.data.images import to_pil, to_tensor
    from engine.demo.measure import purple_fraction
    from engine.demo.shapes import COLOURS, DEMO_COLOUR, draw_shape

    def latent(rgb):
        im = draw_shape("star", rgb, (250, 250, 250), IMAGE_SIZE, random.Random(seed + 9))
        return vae.encode(to_tensor(im)[None]).latent_dist.mean

    with torch.no_grad():
        a, b = latent(COLOURS["black"]), latent(DEMO_COLOUR)
        return [round(purple_fraction(to_pil(vae.decode((1 - t) * a + t * b).sample[0])), 3)
                for t in (0.0, 0.25, 0.5, 0.75, 1.0)]


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
        # The text encoder stays as initialised (frozen, as SD keeps its CLIP frozen): trained
        # jointly, it pulled "circle"/"square" and "triangle"/"star" together (their prompt
        # embeddings 3.2 and 2.6 apart, colours ~30 apart), and the UNet then drew one rounded
        # blob for both; a random CLIP keeps every word distinct and the UNet learns to read it.
        "network": {"type": "dreambooth", "train_text_encoder": False, "save_diffusers": True},
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
    from engine.config.job import parse_config
    from engine.models.single_file import save_single_file
    from engine.training.loop import train
    from engine.training.progress import TqdmProgress

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("presets/base"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-spec", type=int, default=12, help="images per (shape, colour, background)")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-extra", type=int, default=3000, help="arbitrary-colour images for the VAE")
    ap.add_argument("--vae-align", type=float, default=0.02,
                    help="weight of the VAE's colour alignment term (0 = the earlier recipe without it)")
    ap.add_argument("--epochs", type=int, default=50)
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
        scale = train_vae(vae, vae_images, args.vae_steps, args.seed, align_weight=args.vae_align)
        vae.register_to_config(scaling_factor=scale)
        hue_errors = vae_colour_report(vae, args.seed)
        blend = vae_blend_report(vae, args.seed)
        print(f"vae done in {time.time() - t0:.0f}s, scaling_factor {scale:.4f}, hue error (deg) {hue_errors}, "
              f"purple share black->purple {blend}")
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
                "vae_colour_align": args.vae_align, "vae_hue_error_deg": hue_errors,
                "vae_black_to_purple_purple_share": blend, "epochs": args.epochs, "steps": result.steps,
                "final_loss_mean_last_50": sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
                "seconds": round(time.time() - t0), "torch_threads": torch.get_num_threads(),
                "command": " ".join(["python -m engine.demo.pretrain", *(sys.argv[1:] if argv is None else argv)])}
        (args.out / f"{NAME}.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
