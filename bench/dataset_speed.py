"""Dataset pipeline speed on this machine: preprocessing throughput and what caching saves.

(1) Preprocessing: ``--photos`` synthetic 1024x768 JPEG "photos" (noise + shapes, so resizing and
    the focal search do real work) go through ``preprocess_dataset`` at 512 px, once with a
    centre crop and once with the focal crop; images/s = source images / wall time.
(2) Latent cache: the demo LoRA job (embedded shapes model, 12 images x 10 repeats, batch 4)
    trains 2 epochs with ``cache_latents`` off and on, runs alternating, ``--rounds`` times; the
    figure is the *second* epoch's wall time (the first epoch with caching also pays the encode),
    median per setting. The same for text-encoder output caching (train_unet_only, fixed captions).

    python bench/dataset_speed.py --photos 40 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sub = folder / "1_photos"
    sub.mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
        im = Image.fromarray(arr).resize((256, 192)).resize((1024, 768))
        d = ImageDraw.Draw(im)
        x, y = rng.integers(100, 900), rng.integers(100, 650)
        d.ellipse((x - 90, y - 90, x + 90, y + 90), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        im.save(sub / f"photo_{i:03d}.jpg", quality=90)
        (sub / f"photo_{i:03d}.txt").write_text("a photo", encoding="utf-8")
    return folder


def bench_preprocess(n: int) -> dict:
    from engine.data.folder import scan_dataset
    from engine.data.preprocess import PreprocessOptions, preprocess_dataset

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = make_photos(Path(tmp) / "src", n)
        index = scan_dataset(src)
        for crop in ("center", "focal"):
            rep = preprocess_dataset(index, Path(tmp) / f"work_{crop}", PreprocessOptions(resolution=512, crop=crop))
            out[crop] = {"images": rep.sources, "seconds": round(rep.seconds, 2),
                         "images_per_s": round(rep.images_per_second, 2)}
    return out


def _epoch_timer():
    from engine.training.callbacks import Callbacks

    class EpochTimer(Callbacks):
        def __init__(self):
            self.marks = []

        def on_start(self, total):
            self.marks.append(time.perf_counter())

        def on_epoch_end(self, epoch, mean_loss):
            self.marks.append(time.perf_counter())
    return EpochTimer()


def second_epoch_seconds(job: dict, model) -> float:
    import copy

    from engine.config.job import parse_config
    from engine.training.loop import train

    timer = _epoch_timer()
    train(parse_config(job), timer, model=copy.deepcopy(model))
    return timer.marks[2] - timer.marks[1]


def bench_caching(rounds: int) -> dict:
    import tomllib

    from engine.models.loader import load_sd_components

    base_job = tomllib.loads((ROOT / "presets/jobs/demo_lora.toml").read_text())
    base_job["dataset"]["path"] = str(ROOT / "presets/demo/zkz_star")
    base_job["training"].update(epochs=2, batch_size=4)
    base_job["sample"] = {}
    model = load_sd_components("embedded", local_files_only=True)
    settings = {
        "latents_off": {"training": {"cache_latents": False}},
        "latents_on": {"training": {"cache_latents": True}},
        "te_off": {"training": {"cache_latents": True}, "network": {"train_unet_only": True}},
        "te_on": {"training": {"cache_latents": True, "cache_text_encoder_outputs": True},
                  "network": {"train_unet_only": True}},
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, extra in settings.items():
                job = json.loads(json.dumps(base_job))
                for section, values in extra.items():
                    job.setdefault(section, {}).update(values)
                job["dataset"].update(shuffle_caption=False, caption_dropout_rate=0.0, tag_dropout_rate=0.0)
                job["output"].update(dir=str(Path(tmp) / f"{name}{r}"), save_every_n_epochs=0)
                times[name].append(second_epoch_seconds(job, model))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"second_epoch_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "latent_cache_speedup": round(med["latents_off"] / med["latents_on"], 2),
            "te_cache_speedup": round(med["te_off"] / med["te_on"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    result = {"torch_threads": torch.get_num_threads(), "preprocess": bench_preprocess(args.photos),
              "caching": bench_caching(args.rounds)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
