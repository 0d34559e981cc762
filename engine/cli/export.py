"""Headless export for launcher.py: ``card`` writes a shareable folder (model, A1111 sidecar and
preview, sample images, README.md / card.json / card.html) for a trained file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_card(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from engine.cli.dataset import _bar
    from engine.export.card import SampleSettings, export_card, load_job_for
    from engine.export.card_facts import CardError
    from engine.export.card_render import CardInfo
    from engine.export.hub_upload import UploadError, upload_card
    from engine.models.loader import ModelLoadError

    bar = None
    try:
        info = CardInfo(description=args.description, author=args.author, license=args.license,
                        notes=args.notes, tags=[t.strip() for t in args.tags.split(",") if t.strip()],
                        negative_text=args.negative, allow_no_credit=not args.require_credit,
                        allow_commercial_use=["None"] if args.no_commercial else
                        (args.commercial_use or ["Image", "RentCivit", "Rent", "Sell"]))
        job = load_job_for(Path(args.model), Path(args.job) if args.job else None)
        usual = SampleSettings.usual(job, args.base)
        samples = SampleSettings(prompts=args.prompt or [], negative=args.negative, count=args.count,
                                 seed=args.seed, steps=usual.steps if args.steps is None else args.steps,
                                 cfg_scale=usual.cfg_scale if args.cfg is None else args.cfg,
                                 size=usual.size if args.size is None else args.size)
        bar, update = _bar("sample images")
        result = export_card(Path(args.model), Path(args.out), info, job=job, base=args.base,
                             samples=samples, preferred_weight=args.weight,
                             local_files_only=args.offline, progress=update, lang=args.lang)
    except (CardError, ModelLoadError, ValidationError, ValueError, OSError) as err:
        if bar is not None:
            bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(f"model card: {result.folder}")
    for kind, path in result.files.items():
        print(f"  {kind}: {path.name}")
    if not result.samples:
        print("  (no sample images: give --base, or keep the job file beside the model)")
    if args.upload:
        try:
            url = upload_card(result.folder, args.upload, token=args.token, private=args.private,
                              endpoint=args.hub_endpoint)
        except UploadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"uploaded: {url}")
    return 0


def add_export_commands(sub) -> None:
    p = sub.add_parser("card", help="export a model card folder (Civitai/Hugging Face/A1111) for a file")
    p.add_argument("model", help="trained .safetensors / .pt file")
    p.add_argument("--out", default="output/export", help="the card folder is OUT/<model name>/")
    p.add_argument("--job", help="job TOML (default: <name>_job.toml beside the model)")
    p.add_argument("--base", help="base model for sample images (default: the job's)")
    p.add_argument("--weight", type=float, help="recommended weight (default: the one picked in the grid, else 1)")
    p.add_argument("--prompt", action="append", help="sample prompt (repeat; default: the trigger words)")
    p.add_argument("--negative", default="", help="negative prompt (also the sidecar's negative text)")
    p.add_argument("--count", type=int, default=2, help="images per prompt (0 = none)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lang", choices=["en", "zh"], default="en",
                   help="language of README.md and card.html (zh = 简体中文)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's sample settings, else the "
                   "base model's usual, 20)")
    p.add_argument("--cfg", type=float, help="CFG scale (default: the run's sample settings, else the base "
                   "model's usual: 7, the embedded 5)")
    p.add_argument("--size", type=int, help="sample size in pixels (default: the run's sample size, else the "
                   "job's resolution, else the base model's)")
    p.add_argument("--description", default="")
    p.add_argument("--author", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--tags", default="", help="comma-separated")
    p.add_argument("--license", default="creativeml-openrail-m")
    p.add_argument("--require-credit", action="store_true", help="users must credit you")
    p.add_argument("--no-commercial", action="store_true", help="no commercial use")
    p.add_argument("--commercial-use", nargs="*", choices=["Image", "RentCivit", "Rent", "Sell"])
    p.add_argument("--offline", action="store_true", help="never download the base model")
    p.add_argument("--upload", metavar="USER/NAME", help="then upload the folder to this Hugging Face model repo")
    p.add_argument("--token", help="Hugging Face write token (default: HF_TOKEN or the saved login)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--hub-endpoint", help="Hub URL (default: huggingface.co or HF_ENDPOINT, e.g. a mirror)")
    p.set_defaults(func=cmd_card)
