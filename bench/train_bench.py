"""Training throughput, peak memory and MFU: our engine vs a plain diffusers + peft LoRA loop,
on any device, up to real-size SD 1.5 (512 px) and SDXL (1024 px) with random weights.

Each round runs the two sides one after the other, each in a fresh process (so peak memory is
each side's own and neither inherits the other's allocator state), alternating which goes first.
Both sides build the same seeded model, train the same UNet LoRA (rank 16, alpha 8, the modules
``engine.networks.lora.unet_targets`` picks; asserted equal) with AdamW, batch ``--batch``,
cached latents, the frozen text encoder(s) run every step, frozen weights in the training
precision and the LoRA in fp32 under autocast, as the engine does. A side reports the median of
its timed steps (first ``--warmup`` dropped), samples/s, peak memory (CUDA max allocated; on
CPU the process's peak RSS, which includes the model build), and the reference side also the
FLOPs of one step (``torch.utils.flop_counter``: matmuls, convolutions and attention, forward +
backward). MFU = FLOPs per step / s per step / the GPU's dense peak for the precision.

    python bench/train_bench.py --model tiny --steps 20 --warmup 3            # CPU smoke test
    python bench/train_bench.py --model sd15 --resolution 512 --precision bf16 --steps 30 --warmup 5
    python bench/train_bench.py --model sdxl --resolution 1024 --precision bf16 \\
        --gradient-checkpointing --steps 20 --warmup 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from step_time import (  # noqa: E402
    ALPHA,
    LR,
    MAX_GRAD_NORM,
    RANK,
    WEIGHT_DECAY,
    Timer,
    make_dataset,
    real_size_sd15,
    trained_modules,  # noqa: E402
)

# dense (no sparsity) peak tensor FLOP/s by GPU name fragment and precision; --peak-tflops overrides
PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp16": 989.4, "no": 66.9},
               "H100": {"bf16": 989.4, "fp16": 989.4, "no": 66.9},   # SXM figures
               "A100": {"bf16": 312.0, "fp16": 312.0, "no": 19.5},
               "4090": {"bf16": 165.2, "fp16": 165.2, "no": 82.6},
               "3090": {"bf16": 71.0, "fp16": 71.0, "no": 35.6}}
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def real_size_sdxl(seed: int) -> dict:
    """SDXL base's published architecture (UNet, CLIP-L + OpenCLIP-bigG text encoders, VAE) with
    random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.models.clip_tokenizer import load_clip_tokenizer
    from engine.models.toy import SCHEDULE

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025)
    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                  eos_token_id=49407, pad_token_id=1)
    torch.manual_seed(seed + 2)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, hidden_act="quick_gelu",
                                       projection_dim=768, **common))
    torch.manual_seed(seed + 3)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
        hidden_act="gelu", projection_dim=1280, **common))
    tok2 = load_clip_tokenizer()
    tok2.pad_token = "!"
    return {"unet": unet, "vae": vae, "text_encoder": te1.eval(), "text_encoder_2": te2.eval(),
            "tokenizer": load_clip_tokenizer(), "tokenizer_2": tok2,
            "scheduler": DDPMScheduler(**SCHEDULE)}


def build(model: str, seed: int) -> dict:
    from engine.models.toy import tiny_sd15_components, tiny_sdxl_components

    base = {"tiny": tiny_sd15_components, "tiny-sdxl": tiny_sdxl_components, "sd15": real_size_sd15,
            "sdxl": real_size_sdxl}[model](seed)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if base.get(name) is not None:
            base[name].requires_grad_(False).eval()
    return base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_engine(base: dict, args, data_dir: Path, out_dir: Path, total: int, timer: Timer):
    from engine.config.job import parse_config
    from engine.models.loader import LoadedModel
    from engine.training.loop import train

    sdxl = base.get("text_encoder_2") is not None
    cfg = parse_config({
        "model": {"base": "in-memory", "family": "sdxl" if sdxl else "sd15", "local_files_only": True},
        "dataset": {"path": str(data_dir), "resolution": args.resolution},
        "network": {"dim": RANK, "alpha": ALPHA, "train_unet_only": True},
        "optimizer": {"type": "AdamW", "lr": LR, "weight_decay": WEIGHT_DECAY,
                      "max_grad_norm": MAX_GRAD_NORM},
        "training": {"epochs": 1, "max_steps": total, "batch_size": args.batch,
                     "mixed_precision": args.precision, "seed": args.seed,
                     "gradient_checkpointing": args.gradient_checkpointing, "cache_latents": True},
        "output": {"dir": str(out_dir), "name": "bench", "save_every_n_epochs": 0,
                   "save_precision": "fp16" if args.precision != "no" else "fp32"},
    })
    model = LoadedModel(unet=base["unet"], vae=base["vae"], text_encoder=base["text_encoder"],
                        tokenizer=base["tokenizer"], noise_scheduler=base["scheduler"],
                        family="sdxl" if sdxl else "sd15", prediction_type="epsilon",
                        source_kind="memory", name="bench", path=data_dir,
                        text_encoder_2=base.get("text_encoder_2"), tokenizer_2=base.get("tokenizer_2"))
    result = train(cfg, timer, model=model)
    assert result.steps == total, f"engine ran {result.steps} steps, expected {total}"
    return trained_modules(model.unet)


def _encode(base: dict, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a plain diffusers script does: SD 1.x = last hidden state; SDXL = both encoders'
    penultimate states concatenated + the second one's pooled projection."""
    def ids(tok):
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)
    if base.get("text_encoder_2") is None:
        return base["text_encoder"](ids(base["tokenizer"]))[0], None
    o1 = base["text_encoder"](ids(base["tokenizer"]), output_hidden_states=True)
    o2 = base["text_encoder_2"](ids(base["tokenizer_2"]), output_hidden_states=True)
    return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2.text_embeds


def reference_steps(base: dict, args, items, total: int, targets: list[str], device, flops_out: list):
    """Plain diffusers + peft: setup, then ``total`` timed steps (yields each duration), then one
    more step under a FLOP counter."""
    import numpy as np
    from peft import LoraConfig
    from PIL import Image

    dtype = DTYPES[args.precision]
    vae, unet = base["vae"].to(device), base["unet"].to(device, dtype)
    for key in ("text_encoder", "text_encoder_2"):
        if base.get(key) is not None:
            base[key].to(device, dtype)
    with torch.no_grad():
        latents = []
        for path, _ in items:
            arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            px = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(device)
            latents.append(vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    sched = base["scheduler"]
    unet.train()
    captions = [c for _, c in items]
    res = args.resolution
    time_ids = torch.tensor([[res, res, 0, 0, res, res]] * args.batch, device=device, dtype=dtype)
    yield trained_modules(unet)

    def step(picks):
        lat = torch.cat([latents[i] for i in picks]).to(dtype)
        noise = torch.randn_like(lat)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), device=device)
        noisy = sched.add_noise(lat, noise, t)
        with torch.no_grad():
            hidden, pooled = _encode(base, [captions[i] for i in picks], device)
        added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "no"):
            pred = unet(noisy, t, hidden, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(total):
        picks = torch.randint(0, len(items), (args.batch,), generator=gen).tolist()
        _sync(device)
        t0 = time.perf_counter()
        step(picks)
        _sync(device)
        yield time.perf_counter() - t0
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(list(range(args.batch)))
    flops_out.append(counter.get_total_flops())


def side_main(args) -> None:
    """One side of one round, in its own process; prints one JSON line."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    base = build(args.model, args.seed)
    build_s = time.perf_counter() - t0
    from engine.methods.lora import LoraNetworkConfig
    from engine.networks import lora

    targets = [t.name for t in lora.unet_targets(base["unet"], LoraNetworkConfig(
        dim=RANK, alpha=ALPHA, train_unet_only=True))]
    total = args.warmup + args.steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    flops: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        repeats = math.ceil(total * args.batch / args.images)
        items = make_dataset(Path(tmp) / "data", args.resolution, args.images, repeats)
        if args.side == "engine":
            timer = Timer()
            mods = run_engine(base, args, Path(tmp) / "data", Path(tmp) / "out", total, timer)
            times = timer.a
        else:
            gen = reference_steps(base, args, items, total, targets, device, flops)
            mods = next(gen)
            times = list(gen)
    timed = times[args.warmup:]
    s = statistics.median(timed)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print("RESULT " + json.dumps({
        "side": args.side, "s_per_step": s, "samples_per_s": args.batch / s, "peak_bytes": peak,
        "peak_kind": "cuda_max_allocated" if device.type == "cuda" else "rss", "build_s": build_s,
        "flops_per_step": flops[0] if flops else None, "lora_modules": len(mods[0]),
        "lora_params": mods[1], "steps": timed}), flush=True)


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not args.device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table[args.precision]
    return None


def driver(args) -> dict:
    passthrough = [a for a in sys.argv[1:] if a != "--json" and not a.endswith(".json")]
    rounds = []
    for r in range(args.rounds):
        order = ("engine", "reference") if r % 2 == 0 else ("reference", "engine")
        got = {}
        for side in order:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--side", side,
                                  "--device", args.device], capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{side} side failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            got[side] = json.loads(line[-1][7:])
        e, ref = got["engine"], got["reference"]
        assert (e["lora_modules"], e["lora_params"]) == (ref["lora_modules"], ref["lora_params"]), \
            "the two sides train different LoRA modules"
        rounds.append({"engine": e, "reference": ref, "time_ratio": e["s_per_step"] / ref["s_per_step"],
                       "memory_ratio": e["peak_bytes"] / ref["peak_bytes"]})
        print(f"round {r + 1}: engine {e['s_per_step']:.4f} s/step, {e['peak_bytes'] / 2**30:.2f} GiB; "
              f"reference {ref['s_per_step']:.4f} s/step, {ref['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    flops = rounds[0]["reference"]["flops_per_step"]
    peak = peak_tflops(args)
    e_s = statistics.median(x["engine"]["s_per_step"] for x in rounds)
    r_s = statistics.median(x["reference"]["s_per_step"] for x in rounds)
    summary = {
        "model": args.model, "resolution": args.resolution, "batch": args.batch,
        "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "engine_s_per_step": e_s, "reference_s_per_step": r_s,
        "engine_samples_per_s": args.batch / e_s, "time_ratio_median": statistics.median(
            x["time_ratio"] for x in rounds), "memory_ratio_median": statistics.median(
            x["memory_ratio"] for x in rounds),
        "engine_peak_gib": max(x["engine"]["peak_bytes"] for x in rounds) / 2**30,
        "reference_peak_gib": max(x["reference"]["peak_bytes"] for x in rounds) / 2**30,
        "peak_kind": rounds[0]["engine"]["peak_kind"], "flops_per_step": flops,
        "engine_mfu": flops / e_s / (peak * 1e12) if (flops and peak) else None,
        "rounds": rounds,
    }
    mfu = f", MFU {summary['engine_mfu']:.1%}" if summary["engine_mfu"] else ""
    print(f"{args.model} {args.resolution}px batch {args.batch} {args.precision}: engine "
          f"{e_s:.4f} s/step ({args.batch / e_s:.2f} samples/s), reference {r_s:.4f} s/step; time "
          f"ratio {summary['time_ratio_median']:.3f}, peak memory ratio "
          f"{summary['memory_ratio_median']:.3f} ({summary['peak_kind']}); "
          f"{(flops or 0) / 1e9:.2f} GFLOP/step{mfu}")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["tiny", "tiny-sdxl", "sd15", "sdxl"], default="tiny")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=list(DTYPES), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak (default: by GPU name)")
    p.add_argument("--side", choices=["engine", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the full results here")
    args = p.parse_args()
    if args.side:
        side_main(args)
        return
    summary = driver(args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
