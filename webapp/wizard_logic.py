"""What the wizard's steps compute, without Gradio: finding base models, summarising a dataset,
the steps arithmetic, and turning the beginner fields into a job. Kept apart so it is tested
directly and the UI modules stay wiring only."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.i18n import EN, Translator, describe_error

ROOT = Path(__file__).resolve().parent.parent
DEMO_JOB = ROOT / "presets" / "jobs" / "demo_lora.toml"


def output_root() -> Path:
    """Where the app writes (datasets, runs, grids, picks, exports): ``output/`` in the app
    folder, or LORAFORGE_OUTPUT (portable installs on another drive; tests)."""
    import os

    return Path(os.environ.get("LORAFORGE_OUTPUT") or ROOT / "output").resolve()


METHODS = ["lora", "locon", "loha", "lokr", "textual_inversion", "hypernetwork", "dreambooth"]

# The beginner view: (field, job section, key). Labels and guidance (what it does, a sensible
# range, the symptom when too high / too low) are in the catalogues under field.<field>.
BEGINNER_FIELDS: list[tuple[str, str, str]] = [
    ("name", "output", "name"),
    ("trigger", "output", "trigger_phrase"),
    ("resolution", "dataset", "resolution"),
    ("epochs", "training", "epochs"),
    ("batch_size", "training", "batch_size"),
    ("lr", "optimizer", "lr"),
    ("dim", "network", "dim"),
    ("alpha", "network", "alpha"),
    ("save_every", "output", "save_every_n_epochs"),
    ("seed", "training", "seed"),
    ("sample_prompt", "sample", "prompts"),
]


def field_help(t: Translator, key: str, tier: str) -> str:
    """The guidance under a beginner field, ending with the tier preset's value for it."""
    from engine.presets import load_tier

    section, name = next((sec, nm) for k, sec, nm in BEGINNER_FIELDS if k == key)
    value = load_tier(tier).get(section, {}).get(name) if tier else None
    tier_value = (t("method.tier_value", tier=tier, value=value) if value is not None
                  else t("method.tier_unset", tier=tier))
    parts = [t(f"field.{key}.why"), t("method.range", text=t(f"field.{key}.range"))]
    for side in ("high", "low"):  # "-": no telltale symptom on that side
        if t(f"field.{key}.{side}") != "-":
            parts.append(t(f"method.too_{side}", text=t(f"field.{key}.{side}")))
    return " ".join([*parts, tier_value])


@dataclass
class DatasetSummary:
    text: str
    images: list[str]          # paths for the gallery
    num_images: int
    num_per_epoch: int         # images x repeats


def demo_job() -> dict[str, Any]:
    """The demo job (embedded base + demo dataset) with absolute paths."""
    job = tomllib.loads(DEMO_JOB.read_text(encoding="utf-8"))
    job["dataset"]["path"] = str((ROOT / job["dataset"]["path"]).resolve())
    job["output"]["dir"] = str((ROOT / job["output"]["dir"]).resolve())
    return job


def scan_models(folder: str) -> list[str]:
    """Base models in a folder (A1111's models/Stable-diffusion works): single-file .safetensors
    and diffusers folders, one level deep."""
    root = Path(folder.strip()).expanduser()
    if not root.is_dir():
        return []
    found = [p for p in sorted(root.iterdir())
             if (p.is_file() and p.suffix.lower() == ".safetensors") or (p / "model_index.json").is_file()]
    return [str(p) for p in found]


def describe_base(base: str, t: Translator = EN) -> str:
    """The detected type of a base model, or why it cannot be used. Reads headers only."""
    from engine.models.loader import ModelLoadError, resolve_source

    try:
        src = resolve_source(base or "embedded")
    except ModelLoadError as err:
        return t("base.cannot_use", error=describe_error(err, t))
    return f"{src.name}: {t('base.family_' + src.family)} ({t('base.kind_' + src.kind)})"


def summarize_dataset(path: str, t: Translator = EN) -> DatasetSummary:
    """Subsets with their repeats and caption coverage (kohya layout), plus gallery images."""
    from engine.data.folder import DatasetError, scan_dataset

    try:
        index = scan_dataset(Path(path.strip()))
    except (DatasetError, OSError) as err:
        return DatasetSummary(t("dataset.cannot_use", error=describe_error(err, t)), [], 0, 0)
    lines = []
    for sub in index.subsets:
        captioned = sum(1 for it in sub.items if it.path.with_suffix(".txt").is_file())
        lines.append(t("dataset.subset", name=sub.name, images=len(sub.items), repeats=sub.repeats,
                       captioned=captioned))
    text = "\n".join([t("dataset.summary", images=index.num_images, per_epoch=index.num_train_images),
                      *lines])
    images = [str(it.path) for sub in index.subsets for it in sub.items]
    return DatasetSummary(text, images, index.num_images, index.num_train_images)


def steps_text(per_epoch: int, epochs: float, batch: float, accumulation: int = 1,
               t: Translator = EN) -> str:
    """images x repeats x epochs / batch = steps, with the numbers filled in."""
    epochs, batch = int(epochs or 0), max(int(batch or 1), 1)
    per_step = batch * max(accumulation, 1)
    steps_per_epoch = -(-per_epoch // per_step) if per_epoch else 0
    return t("method.steps", per_epoch=per_epoch, epochs=epochs, batch=per_step,
             steps=steps_per_epoch * epochs, per=steps_per_epoch)


def build_job(base: str, dataset: str, method: str, tier: str, fields: dict[str, Any],
              output_dir: str | None = None) -> dict[str, Any]:
    """The job: tier preset < demo defaults < the wizard's fields (the user's values win)."""
    from engine.presets import apply_tier, deep_merge

    job = demo_job()
    job = {k: v for k, v in job.items() if k in ("schema_version", "scheduler")}
    user: dict[str, Any] = {"model": {"base": base or "embedded"}, "dataset": {"path": dataset}}
    if base in ("", "embedded"):
        user["model"]["local_files_only"] = True
    for key, section, name in BEGINNER_FIELDS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer() and key not in ("lr", "alpha"):
            value = int(value)
        if key == "sample_prompt":
            user["sample"] = {"prompts": [value.strip()], "every_n_epochs": 1}
            continue
        user.setdefault(section, {})[name] = value
    if method != "lora":
        user.setdefault("network", {})["type"] = method
        if method in ("textual_inversion", "hypernetwork", "dreambooth"):
            for k in ("dim", "alpha"):
                user["network"].pop(k, None)
    if method == "textual_inversion":
        trigger = fields.get("trigger") or "zkz"
        user["network"]["token"] = "".join(ch for ch in trigger if ch.isalnum() or ch in "_-") or "zkz"
    user.setdefault("output", {})["dir"] = output_dir or str(output_root() / "runs")
    return deep_merge(job, apply_tier({}, tier, user)) if tier else deep_merge(job, user)


def job_from_shared_preset(text: str, base: str, dataset: str, t: Translator = EN) -> tuple[str, str]:
    """(job TOML, message) from a pasted preset TOML or share code, with this page's base model,
    dataset and output folder; on a bad preset ("", the reason in the page's language). Nothing in
    a preset is executed: it is TOML, checked field by field (engine.preset_share)."""
    import tomli_w

    from engine.config import config_to_dict
    from engine.preset_share import CODE_PREFIX, PresetError, from_code, job_from_preset

    text = (text or "").strip()
    if not text:
        return "", t("method.preset_empty")
    try:
        preset = from_code(text) if text.startswith(CODE_PREFIX) else text
        cfg = job_from_preset(preset, base or "embedded", dataset, str(output_root() / "runs"))
    except PresetError as err:
        return "", t("method.preset_bad", error=describe_error(err, t))
    job = config_to_dict(cfg)
    if job["model"]["base"] == "embedded":
        job["model"]["local_files_only"] = True
    return tomli_w.dumps(job), t("method.preset_used", method=cfg.network.type, epochs=cfg.training.epochs)


def fields_from_job(job: dict[str, Any]) -> dict[str, Any]:
    values = {key: job.get(section, {}).get(name) for key, section, name in BEGINNER_FIELDS}
    prompts = values.get("sample_prompt") or []
    values["sample_prompt"] = prompts[0] if prompts else (
        f"{job['output'].get('trigger_phrase', '')}, a star on a white background --w 64 --h 64 --s 12"
        if job.get("model", {}).get("base") == "embedded" else "")
    return values


def preflight(job_text: str, t: Translator = EN, ws=None) -> tuple[bool, str]:
    """Everything we can check before launching: TOML, every field, the paths (``ws``: a
    webapp.security.Workspace), the dataset, the base model."""
    from engine.config import ConfigError, parse_job_text
    from engine.data.folder import DatasetError, scan_dataset
    from engine.models.loader import ModelLoadError, resolve_source

    try:
        cfg = parse_job_text(job_text)
        if ws is not None:
            ws.job(cfg)
    except ValueError as err:  # ConfigError, PathNotAllowed
        return False, describe_error(err, t)
    try:
        index = scan_dataset(Path(cfg.dataset.path))
        src = resolve_source(cfg.model.base, local_files_only=cfg.model.local_files_only,
                             allow_pickle=cfg.model.allow_pickle)
    except (DatasetError, ModelLoadError, OSError) as err:
        return False, describe_error(err, t)
    return True, t("method.ready", method=cfg.network.type, base=src.name, family=src.family,
                   images=index.num_images, epochs=cfg.training.epochs)
