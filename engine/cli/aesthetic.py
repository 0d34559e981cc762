"""Headless Aesthetic Gradients for launcher.py: ``aesthetic`` makes an embedding from reference
images; the grid's ``--aesthetic-*`` flags say how embeddings are applied."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_aesthetic(args: argparse.Namespace) -> int:
    from engine.cli.dataset import _bar
    from engine.generate.aesthetic import AestheticError, create_aesthetic_embedding

    bar, update = _bar("encoding reference images")
    try:
        pt, st = create_aesthetic_embedding(Path(args.images), args.clip, Path(args.out), args.name,
                                            local_files_only=args.offline, progress=update)
    except AestheticError as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    print(f"aesthetic embedding: {pt} (A1111: models/aesthetic_embeddings) and {st}")
    return 0


def add_grid_arguments(grid: argparse.ArgumentParser) -> None:
    g = grid.add_argument_group("aesthetic embeddings (when the files are aesthetic embeddings; "
                                "--weights are then aesthetic weights)")
    g.add_argument("--aesthetic-steps", type=int, default=5, help="text-encoder steps per prompt")
    g.add_argument("--aesthetic-lr", type=float, default=1e-4)
    g.add_argument("--aesthetic-slerp", action="store_true", help="spherical blend")
    g.add_argument("--aesthetic-text", default="", help="text that rotates the image embedding")
    g.add_argument("--aesthetic-slerp-angle", type=float, default=0.1)
    g.add_argument("--aesthetic-text-negative", action="store_true")
    g.add_argument("--aesthetic-clip", help="CLIP hub id or folder (default: recorded in the file)")


def settings_from_args(args: argparse.Namespace):
    from engine.generate.aesthetic import AestheticSettings

    return AestheticSettings(steps=args.aesthetic_steps, lr=args.aesthetic_lr, slerp=args.aesthetic_slerp,
                             text=args.aesthetic_text, slerp_angle=args.aesthetic_slerp_angle,
                             text_negative=args.aesthetic_text_negative, clip=args.aesthetic_clip)


def add_aesthetic_command(sub) -> None:
    p = sub.add_parser("aesthetic", help="make an aesthetic embedding (Aesthetic Gradients) from images")
    p.add_argument("images", help="folder of reference images (1 or more)")
    p.add_argument("--name", required=True, help="embedding name (file name)")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14",
                   help="CLIP hub id or folder; must match the base model's text encoder (SD 1.5: the default)")
    p.add_argument("--out", default="output/aesthetic_embeddings")
    p.add_argument("--offline", action="store_true", help="never download the CLIP")
    p.set_defaults(func=cmd_aesthetic)
