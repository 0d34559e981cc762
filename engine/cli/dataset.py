"""Headless dataset commands for launcher.py: ``prep`` (import + validate + working copy) and
``caption`` (WD14 / BLIP). Same engine calls as the web app's dataset step."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="img")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
    return bar, update


def cmd_prep(args: argparse.Namespace) -> int:
    from engine.data.folder import DatasetError, scan_dataset
    from engine.data.importer import SKIP_REASONS, import_concept
    from engine.data.preprocess import PreprocessOptions, preprocess_dataset
    from engine.data.validate import validate_folder

    work = Path(args.out)
    try:
        source = Path(args.source)
        imported = work / "imported"
        rep = import_concept(source, imported, args.name, args.repeats)
        print(rep.summary())
        for name, why in rep.skipped:
            print(f"  skipped {name}: {SKIP_REASONS[why]}")
        report = validate_folder(imported, args.resolution)
        print(report.summary())
        for f in report.files:
            for msg in f.errors + f.warnings:
                print(f"  {f.path.name}: {msg}")
        opts = PreprocessOptions(resolution=args.resolution, crop=args.crop, flip_copies=args.flip,
                                 split_oversized=args.split)
        bar, update = _bar("preprocess")
        done = preprocess_dataset(scan_dataset(imported), work / "train", opts, update)
        bar.close()
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(done.summary())
    print(f"working copy: {work / 'train'} (use it as dataset.path)")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from engine.captioning.run import caption_images, dataset_images, load_captioner
    from engine.captioning.sources import CaptionModelError

    try:
        captioner, opts = load_captioner(
            args.method, args.model or "", args.offline, args.threshold, args.character_threshold,
            [t for t in (args.exclude or "").split(",") if t.strip()])
    except CaptionModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = dataset_images(Path(args.dir))
    if not images:
        print(f"error: no images in {args.dir}", file=sys.stderr)
        return 2
    bar, update = _bar(f"caption ({args.method})")
    report = caption_images(images, captioner, opts, args.mode, args.trigger, update)
    bar.close()
    print(report.summary())
    return 0


def add_dataset_commands(sub) -> None:
    prep = sub.add_parser("prep", help="import images (folder or zip), validate, write a working copy")
    prep.add_argument("source", help="folder or .zip of images (+ .txt captions)")
    prep.add_argument("--name", required=True, help="concept name (folder becomes N_name)")
    prep.add_argument("--repeats", type=int, default=10)
    prep.add_argument("--resolution", type=int, default=512)
    prep.add_argument("--crop", choices=["center", "focal", "bucket"], default="center")
    prep.add_argument("--flip", action="store_true", help="also write mirrored copies")
    prep.add_argument("--split", action="store_true", help="split very long images into tiles")
    prep.add_argument("--out", required=True, help="workspace folder")
    prep.set_defaults(func=cmd_prep)

    cap = sub.add_parser("caption", help="caption a dataset folder with WD14 tags or BLIP sentences")
    cap.add_argument("dir")
    cap.add_argument("--method", choices=["wd14", "blip"], default="wd14")
    cap.add_argument("--model", help="local folder or hub repo id (default: the usual public model)")
    cap.add_argument("--threshold", type=float, default=0.35, help="WD14 general tag threshold")
    cap.add_argument("--character-threshold", type=float, help="WD14 character threshold (default: same)")
    cap.add_argument("--exclude", help="comma-separated tags never written")
    cap.add_argument("--mode", choices=["skip", "overwrite", "append"], default="skip")
    cap.add_argument("--trigger", default="", help="put this tag first in every new caption")
    cap.add_argument("--offline", action="store_true")
    cap.set_defaults(func=cmd_caption)
