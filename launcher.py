#!/usr/bin/env python3
"""LoRA Forge entry point: ``serve`` (default) the web app, or run engine commands headless.

    python launcher.py                      # start the web app on 127.0.0.1
    python launcher.py train --config job.toml [--tier auto]
    python launcher.py grid --base B --checkpoints A.safetensors ... --prompt P
    python launcher.py pick EPOCH.safetensors --name FINAL
    python launcher.py prep PHOTOS.zip --name mychar --out work/   # import, validate, crop
    python launcher.py caption work/train --method wd14|blip
    python launcher.py aesthetic REFS/ --name mystyle   # Aesthetic Gradients embedding
    python launcher.py card output/mylora.safetensors   # model card + A1111 sidecar folder
    python launcher.py preset export --config job.toml --name mine --code   # share settings
    python launcher.py doctor               # what hardware was found, which preset tier
    python launcher.py doctor --job job.toml --tier auto   # will this job fit the GPU? (predicted peak)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def cmd_train(args: argparse.Namespace) -> int:
    from engine.config.job import ConfigError, parse_config, read_toml_file

    tier = None
    try:
        user_job = read_toml_file(args.config)
        data = user_job
        if args.tier:
            from engine.config.tiers import apply_tier
            from engine.system.hardware import pick_tier, probe

            tier = pick_tier(probe()) if args.tier == "auto" else args.tier
            if args.tier == "auto":
                print(tier.reason)
            name = getattr(tier, "name", tier)
            print(f"preset tier: {name} (values in {args.config} take precedence)")
            data = apply_tier({}, tier, user_job)
        cfg = parse_config(data)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from engine.data.folder import DatasetError
    from engine.models.loader import ModelLoadError
    from engine.training.guards import DiskFullError, TrainingDiverged
    from engine.training.loop import train
    from engine.training.progress import TqdmProgress
    from engine.training.setup import SetupError
    from engine.training.state import StateError
    from engine.training.tier_fallback import train_with_tier_fallback

    progress = TqdmProgress(print_every=args.print_every)
    try:
        if tier is not None:  # out of GPU memory at the start: one retry with the next smaller tier
            result = train_with_tier_fallback(user_job, tier, progress, resume=args.resume)
        else:
            result = train(cfg, progress, resume=args.resume)
    except (ModelLoadError, DatasetError, SetupError, StateError, TrainingDiverged, DiskFullError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.final_path is not None:  # (with several processes only the first saves)
        print(f"done: {result.steps} steps, final file {result.final_path}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.cli.aesthetic import settings_from_args
    from engine.generate.grid import GridError, GridJob, parse_weights, run_grid
    from engine.generate.placement import base_for_grid, place, this_machine
    from engine.models.loader import ModelLoadError

    try:
        weights = parse_weights(args.weights)
        aesthetic = settings_from_args(args)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
        missing = [p for p in args.checkpoints if not Path(p).is_file()]
        if missing:
            raise GridError(f"checkpoint not found: {missing[0]}")
        from engine.generate.sampling_defaults import for_base

        usual = for_base(args.base)  # what this base draws best with, unless given
        size = usual.size if args.size is None else args.size
        per_cell = usual.seeds_per_cell if args.seeds_per_cell is None else args.seeds_per_cell
        job = GridJob(checkpoints=[Path(p) for p in args.checkpoints], prompts=args.prompt, weights=weights,
                      seeds=seeds, z_axis="seed" if args.seeds else "prompt", negative=args.negative,
                      steps=usual.steps if args.steps is None else args.steps,
                      cfg_scale=usual.cfg_scale if args.cfg is None else args.cfg, width=size, height=size,
                      aesthetic=aesthetic, local_files_only=args.offline, seeds_per_cell=per_cell,
                      control_prompt=args.control_prompt, references=Path(args.dataset) if args.dataset else None)
        model, quantize = base_for_grid(args.base, args.vae, job.checkpoints[0], local_files_only=args.offline)
        drawing = this_machine()
        place(model, drawing, quantize)  # the GPU in half precision where there is one
    except (GridError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar = tqdm(total=len(job.checkpoints) * len(weights), unit="cell-group")
    try:
        with drawing.autocast():
            result = run_grid(model, job, Path(args.out), lambda done, total: bar.update(1))
    except ValueError as err:  # a file that does not fit the base, or mixed file kinds
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    for path in result.grids:
        print(f"grid: {path}")
    for line in result.summary_lines:
        print(f"  {line}")
    if result.summary_csv:
        print(f"summary: {result.summary_csv}")
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from engine.export.pick import pick_checkpoint

    dest = Path(args.out) / f"{args.name}{Path(args.checkpoint).suffix or '.safetensors'}"
    try:
        pick_checkpoint(Path(args.checkpoint), dest, args.weight)
    except (OSError, ValueError) as err:  # PickError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"picked {args.checkpoint} -> {dest}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.system.doctor import doctor_report, job_report

    print(doctor_report())
    if args.job:
        from engine.config.job import ConfigError
        from engine.models.loader import ModelLoadError

        try:
            print(job_report(Path(args.job), args.tier))
        except (ConfigError, ModelLoadError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from webapp.server import serve

    return serve(host=args.host, port=args.port, open_browser=not args.no_browser,
                 listen=args.listen, auth=args.auth, lang=args.lang, workspace=args.workspace,
                 allowed_host=args.allowed_host)


def build_parser() -> argparse.ArgumentParser:
    from engine.cli.aesthetic import add_aesthetic_command
    from engine.cli.aesthetic import add_grid_arguments as add_aesthetic_grid_arguments
    from engine.cli.export import add_export_commands
    from engine.cli.preset import add_preset_commands

    parser = argparse.ArgumentParser(prog="launcher.py", description="LoRA Forge")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="start the web app (default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--no-browser", action="store_true")
    serve.add_argument("--listen", action="store_true", help="expose on the network (needs --auth)")
    serve.add_argument("--auth", help="user:password, required with --listen or any non-loopback --host")
    serve.add_argument("--workspace", action="append", metavar="DIR",
                       help="when exposed: a folder web users may use besides the app's own (repeatable)")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="another name this server answers to, e.g. behind a proxy (repeatable)")
    serve.add_argument("--lang", choices=["en", "zh"],
                       help="language of the app (default: the browser's; en = English, zh = 简体中文)")
    serve.set_defaults(func=cmd_serve)

    from engine.methods import methods  # torch-free: the registry's names and schemas

    train = sub.add_parser("train", help="train headless from a job TOML")
    train.add_argument("--config", required=True,
                       help=f"the job TOML; its network.type is one of: {', '.join(methods())}")
    train.add_argument("--tier", help="merge a hardware preset tier under the job ('auto' = probe)")
    train.add_argument("--print-every", type=int, default=1, help="loss line every N steps (0 = off)")
    train.add_argument("--resume", nargs="?", const="auto", metavar="STATE",
                       help="continue from the newest saved training state (or this state folder)")
    train.set_defaults(func=cmd_train)

    grid = sub.add_parser("grid", help="XYZ grid: checkpoints x LoRA weights (x prompts or seeds)")
    grid.add_argument("--base", required=True, help="base model (folder, .safetensors, hub id, embedded)")
    grid.add_argument("--checkpoints", nargs="+", required=True,
                      help="LoRA / LyCORIS .safetensors, hypernetwork .pt, embedding or aesthetic "
                      "embedding files, one grid row each")
    grid.add_argument("--prompt", action="append", required=True, help="repeat for a prompt Z axis")
    grid.add_argument("--negative", default="")
    grid.add_argument("--weights", default="0, 0.4, 0.6, 0.8, 1.0", help="list or range '0.4-1.0(+0.2)'")
    grid.add_argument("--seed", type=int, default=42)
    grid.add_argument("--seeds", help="comma-separated seeds: makes seeds the Z axis")
    grid.add_argument("--seeds-per-cell", type=int,
                      help="images per cell (seeds seed, seed+1, ...), tiled: one seed is too noisy to pick "
                           "by (default: the base model's usual: 2, the embedded 4)")
    grid.add_argument("--dataset", help="the training images: each row gets a likeness figure (0-100)")
    grid.add_argument("--control-prompt", default="",
                      help="a prompt WITHOUT the trigger: its own grid, and each row's bleed figure (0-100)")
    grid.add_argument("--steps", type=int, help="sampling steps (default: the base model's usual, 20)")
    grid.add_argument("--cfg", type=float, help="CFG scale (default: the base model's usual: 7, the embedded 5)")
    grid.add_argument("--size", type=int, help="image size in pixels (default: the base model's: 512, SDXL 1024, "
                      "the embedded 64)")
    grid.add_argument("--vae", help="a separate VAE (file, diffusers folder, hub id); default: the base's own")
    grid.add_argument("--offline", action="store_true", help="never download the base model")
    grid.add_argument("--out", default="output/grid")
    add_aesthetic_grid_arguments(grid)
    grid.set_defaults(func=cmd_grid)

    pick = sub.add_parser("pick", help="publish one epoch's file under the final name")
    pick.add_argument("checkpoint")
    pick.add_argument("--name", required=True)
    pick.add_argument("--out", default="output")
    pick.add_argument("--weight", type=float, help="the LoRA weight you chose, stored in metadata")
    pick.set_defaults(func=cmd_pick)

    doctor = sub.add_parser("doctor", help="report GPU/VRAM, packages and the chosen preset tier")
    doctor.add_argument("--job", help="a job file: predict its peak GPU memory and say whether it fits")
    doctor.add_argument("--tier", help="layer this preset tier under the job, as train --tier does (or 'auto')")
    doctor.set_defaults(func=cmd_doctor)

    from engine.cli.dataset import add_dataset_commands

    add_dataset_commands(sub)
    add_aesthetic_command(sub)
    add_export_commands(sub)
    add_preset_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # no command given: serve, with any serve flags
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
