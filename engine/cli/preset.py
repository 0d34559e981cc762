"""Headless preset sharing for launcher.py: ``preset export`` (job -> shareable TOML / text code)
and ``preset import`` (TOML file or code -> a job file for this machine)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.models.families import FAMILY_IDS


def cmd_preset_export(args: argparse.Namespace) -> int:
    from engine.config.job import ConfigError, load_config
    from engine.config.preset_share import PresetError, export_preset, to_code
    from engine.fileio import atomic_write_bytes

    try:
        text = export_preset(load_config(args.config), args.name, args.author, args.description,
                             args.family, args.tier)
    except (ConfigError, PresetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode("utf-8"))
        print(f"preset: {args.out}")
    else:
        print(text)
    if args.code:
        print(to_code(text))
    return 0


def cmd_preset_import(args: argparse.Namespace) -> int:
    from engine.config.job import ConfigError, save_config
    from engine.config.preset_share import CODE_PREFIX, PresetError, job_from_preset, read_preset_file

    source = args.preset.strip()
    try:
        text = source if source.startswith(CODE_PREFIX) else read_preset_file(source)
        cfg = job_from_preset(text, args.base, args.dataset, args.output_dir, args.name)
    except (ConfigError, PresetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_config(cfg, Path(args.out))
    print(f"job: {args.out} (method {cfg.network.type}; train it with "
          f"'launcher.py train --config {args.out}')")
    return 0


def add_preset_commands(sub) -> None:
    preset = sub.add_parser("preset", help="share settings: export a job as a preset, import one")
    psub = preset.add_subparsers(dest="preset_command", required=True)
    ex = psub.add_parser("export", help="job TOML -> shareable preset (no local paths)")
    ex.add_argument("--config", required=True, help="the job TOML")
    ex.add_argument("--name", required=True, help="preset name")
    ex.add_argument("--author", default="")
    ex.add_argument("--description", default="")
    ex.add_argument("--family", default="any", choices=["any", *FAMILY_IDS], help="base model family")
    ex.add_argument("--tier", default="any", help="VRAM tier it was tuned for (cpu, 4gb, ..., 24gb+)")
    ex.add_argument("--out", help="write the preset here (default: print it)")
    ex.add_argument("--code", action="store_true", help="also print the one-line text code")
    ex.set_defaults(func=cmd_preset_export)
    im = psub.add_parser("import", help="preset file or text code -> a job TOML for this machine")
    im.add_argument("preset", help="preset .toml file, or a code starting with LFP1.")
    im.add_argument("--base", required=True, help="base model (folder, .safetensors, hub id, embedded)")
    im.add_argument("--dataset", required=True, help="dataset folder")
    im.add_argument("--output-dir", default="output")
    im.add_argument("--name", help="output name (default: the preset's)")
    im.add_argument("--out", default="job.toml", help="job file to write")
    im.set_defaults(func=cmd_preset_import)
