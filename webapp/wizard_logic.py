"""What the wizard's steps compute, without Gradio: finding base models, checking a dataset the
way training will, the demo job, what a job will train (the summary above Start), soft warnings,
shared presets. Kept apart so it is tested directly and the UI modules stay wiring only."""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.data.words import trigger_words
from engine.i18n import EN, Translator, describe_error

ROOT = Path(__file__).resolve().parent.parent
DEMO_JOB = ROOT / "presets" / "jobs" / "demo_lora.toml"
MAX_REPORT_LINES = 30  # per-file lines in the dataset report; the rest is counted


def output_root() -> Path:
    """Where the app writes (datasets, runs, grids, picks, exports): ``output/`` in the app
    folder, or LORAFORGE_OUTPUT (portable installs on another drive; tests)."""
    return Path(os.environ.get("LORAFORGE_OUTPUT") or ROOT / "output").resolve()


def runs_root() -> Path:
    """The wizard's default output folder: each run gets its own folder inside it."""
    return output_root() / "runs"


def demo_job() -> dict[str, Any]:
    """The demo job (embedded base + demo dataset) as presets/jobs/demo_lora.toml has it, value
    for value, with its paths made absolute."""
    job = tomllib.loads(DEMO_JOB.read_text(encoding="utf-8"))
    job["dataset"]["path"] = str((ROOT / job["dataset"]["path"]).resolve())
    job["output"]["dir"] = str((ROOT / job["output"]["dir"]).resolve())
    return job


def wizard_job() -> dict[str, Any]:
    """The job a new page starts with: the demo, writing its runs under output/runs."""
    job = demo_job()
    job["output"]["dir"] = str(runs_root())
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


# ---------------------------------------------------------------- the dataset, as training sees it

def _checked(path: Path, resolution: int):
    """engine.data.validate.check_image, remembered per file version (the page re-checks on
    every edit; a photo is decoded once)."""
    st = path.stat()
    return _check_cached(str(path), st.st_mtime_ns, st.st_size, resolution)


@lru_cache(maxsize=8192)
def _check_cached(path: str, mtime_ns: int, size: int, resolution: int):
    from engine.data.validate import check_image

    return check_image(Path(path), resolution)


@dataclass
class DatasetSummary:
    text: str
    images: list[str]          # every image file, for the gallery
    num_images: int            # the images training uses
    num_per_epoch: int         # those x repeats
    labels: dict[str, str] = field(default_factory=dict)  # gallery captions: why a file is left out
    usable: bool = False
    index: Any = None          # the usable DatasetIndex, as training will scan it


def summarize_dataset(path: str, t: Translator = EN, resolution: int = 512, default_repeats: int = 1,
                      caption_extension: str = ".txt") -> DatasetSummary:
    """The dataset exactly as training will use it: subsets with repeats and caption coverage,
    then the per-file check (left out / fixed automatically / worth a look, with the reason).
    Unusable files are left out of the counts, never deleted."""
    from engine.data.folder import DatasetError, scan_dataset
    from engine.data.validate import usable_index

    try:
        index = scan_dataset(Path(path.strip()), default_repeats, caption_extension)
        usable, report = usable_index(index, resolution, check=_checked)
    except (DatasetError, OSError) as err:
        return DatasetSummary(t("dataset.cannot_use", error=describe_error(err, t)), [], 0, 0)
    lines = [t("dataset.summary", images=usable.num_images, per_epoch=usable.num_train_images)]
    for sub in usable.subsets:
        captioned = sum(1 for it in sub.items if it.path.with_suffix(".txt").is_file())
        lines.append(t("dataset.subset", name=sub.name, images=len(sub.items), repeats=sub.repeats,
                       captioned=captioned))
    groups = {"error": [], "note": [], "warning": []}
    for f in report.files:
        for issue in f.issues:
            if issue.key != "non_ascii":  # fine here; only worth a word in the CLI report
                groups[issue.level].append((f.path, issue))
    left_out = {f.path for f in report.files if not f.ok}
    lines.append(t("dataset.checked", ok=len(report.files) - len(left_out), left_out=len(left_out),
                   fixed=len({p for p, _ in groups["note"]}), warned=len({p for p, _ in groups["warning"]})))
    shown = [(t(f"dataset.check_{level}", name=p.name, why=t(f"validate.{i.key}", **i.params)))
             for level in ("error", "note", "warning") for p, i in groups[level]]
    lines += shown[:MAX_REPORT_LINES]
    if len(shown) > MAX_REPORT_LINES:
        lines.append(t("dataset.skipped_more", n=len(shown) - MAX_REPORT_LINES))
    if not usable.subsets:
        lines.append(t("dataset.none_usable"))
    labels = {str(p): t("dataset.left_out_label", why=t(f"validate.{i.key}", **i.params))
              for p, i in groups["error"]}
    return DatasetSummary("\n".join(lines), [str(it.path) for it in index.items], usable.num_images,
                          usable.num_train_images, labels, bool(usable.subsets), usable)


# ---------------------------------------------------------------- what a job will train

def steps_text(per_epoch: int, epochs: float, batch: float, accumulation: int = 1,
               t: Translator = EN) -> str:
    """images x repeats x epochs / batch = steps, with the numbers filled in."""
    epochs, batch = int(epochs or 0), max(int(batch or 1), 1)
    per_step = batch * max(accumulation, 1)
    steps_per_epoch = -(-per_epoch // per_step) if per_epoch else 0
    return t("method.steps", per_epoch=per_epoch, epochs=epochs, batch=per_step,
             steps=steps_per_epoch * epochs, per=steps_per_epoch)


@dataclass
class Plan:
    """What a job will train, or why it cannot: the summary above Start and the soft warnings."""
    ok: bool
    text: str
    warnings: list[str] = field(default_factory=list)
    cfg: Any = None
    dataset: DatasetSummary | None = None


def plan(job: dict[str, Any], t: Translator = EN, ws=None, seconds_per_step: float | None = None) -> Plan:
    """Check ``job`` as Start will (every field, paths for ``ws``, the dataset as training sees
    it, the base model's headers) and say what will train."""
    from engine.config.job import ConfigError, parse_config
    from engine.models.loader import EMBEDDED_DIR, ModelLoadError, resolve_source
    from engine.training.data_setup import regularized
    from webapp.job_form import method_label, steps_of

    try:
        cfg = parse_config(job)
        if ws is not None:
            ws.job(cfg)
    except (ConfigError, ValueError) as err:
        return Plan(False, t("train.cannot_start", error=describe_error(err, t)))
    d = cfg.dataset
    data = summarize_dataset(d.path, t, d.resolution, d.default_repeats, d.caption_extension)
    if not data.usable:
        return Plan(False, t("train.cannot_start", error=data.text.splitlines()[-1]), dataset=data)
    try:
        src = resolve_source(cfg.model.base, local_files_only=cfg.model.local_files_only,
                             allow_pickle=cfg.model.allow_pickle)
    except (ModelLoadError, OSError) as err:
        return Plan(False, t("train.cannot_start", error=describe_error(err, t)), dataset=data)
    paired = regularized(cfg, data.index)
    per, total = steps_of(cfg, data.num_per_epoch * (2 if paired else 1))
    folder = Path(cfg.output.dir) / f"{cfg.output.name}-{t('train.date_time')}"
    text = t("train.summary", base=f"{src.name} ({t('base.family_' + src.family)})", path=d.path,
             images=data.num_images, per_epoch=data.num_per_epoch, method=method_label(t, cfg.network.type),
             steps=total, epochs=cfg.training.epochs, per=per, folder=folder)
    family = "" if src.path == EMBEDDED_DIR else src.family  # the toy model has no "usual" ranges
    return Plan(True, text, soft_warnings(cfg, data.num_images, total, family, t, seconds_per_step, paired),
                cfg, data)


# Words that make poor trigger words: the model already knows them well (A1111/kohya guides)
COMMON_WORDS = {"a", "an", "the", "girl", "boy", "man", "woman", "person", "cat", "dog", "star", "style",
                "photo", "art", "anime", "car", "house", "flower", "red", "blue", "green", "face", "portrait"}


def soft_warnings(cfg, num_images: int, total_steps: int, family: str, t: Translator = EN,
                  seconds_per_step: float | None = None, paired: bool | None = None) -> list[str]:
    """What a kohya_ss/OneTrainer user would want pointed out before hours of training; each
    says why. None of them stops the job. ``paired``: whether training has regularization images
    (``regularized``), when the caller already knows."""
    out = []
    from engine.methods import method_of
    from engine.models import families
    from engine.training.data_setup import regularized, uses_prior_images

    method = method_of(cfg.network)
    low, high = method.usual_lr
    # the usual rates are those of real models; the embedded toy model ("" family) has none
    if family and not getattr(cfg.network, "lr_schedule", None) and cfg.optimizer.type != "Prodigy":
        if cfg.optimizer.lr > high * 5:
            out.append(t("warn.lr_high", lr=f"{cfg.optimizer.lr:g}", high=f"{high:g}"))
        elif cfg.optimizer.lr < low / 5:
            out.append(t("warn.lr_low", lr=f"{cfg.optimizer.lr:g}", low=f"{low:g}"))
    net = cfg.network
    if hasattr(net, "dim") and net.alpha > net.dim:
        out.append(t("warn.alpha_dim", alpha=f"{net.alpha:g}", dim=net.dim))
    if cfg.training.batch_size > num_images:
        out.append(t("warn.batch_dataset", batch=cfg.training.batch_size, images=num_images))
    if method.counts_steps and family:
        if total_steps > 2 * 3000:
            out.append(t("warn.steps_high", steps=total_steps))
        elif total_steps < 200:
            out.append(t("warn.steps_low", steps=total_steps))
    out += [t(f"warn.{key}", **values) for key, values in method.warnings(net)]
    trigger = (trigger_words(cfg.output.trigger_phrase) or [""])[0].lower()
    if trigger in COMMON_WORDS:
        out.append(t("warn.trigger_common", word=trigger))
    expected = families.BY_ID[family].default_resolution if family in families.BY_ID else None
    if expected and cfg.dataset.resolution < expected * 3 // 4:
        out.append(t("warn.resolution", resolution=cfg.dataset.resolution, expected=expected))
    if paired is None:
        paired = regularized(cfg)
    if uses_prior_images(cfg) and not cfg.dataset.reg_path and not paired:
        out.append(t("warn.prior_no_trigger", word=cfg.output.trigger_phrase))
    if seconds_per_step:
        minutes = math.ceil(total_steps * seconds_per_step / 60)
        out.append(t("warn.time", minutes=minutes, steps=total_steps))
    return out


def job_from_shared_preset(text: str, base: str, dataset: str, t: Translator = EN
                           ) -> tuple[dict[str, Any] | None, str]:
    """(job, message) from a pasted preset TOML or share code, with this page's base model,
    dataset and output folder; on a bad preset (None, the reason in the page's language).
    Nothing in a preset is executed: it is TOML, checked field by field (engine.config.preset_share)."""
    from engine.config.job import config_to_dict
    from engine.config.preset_share import CODE_PREFIX, PresetError, from_code, job_from_preset, parse_preset
    from webapp.job_form import method_label

    text = (text or "").strip()
    if not text:
        return None, t("method.preset_empty")
    try:
        preset = from_code(text) if text.startswith(CODE_PREFIX) else text
        cfg = job_from_preset(preset, base or "embedded", dataset, str(runs_root()))
        settings = parse_preset(preset)[1]
    except PresetError as err:
        return None, t("method.preset_bad", error=describe_error(err, t))
    job = config_to_dict(cfg)
    if "save_state" not in settings.get("output", {}):
        job["output"]["save_state"] = True  # a wizard run can be resumed after Stop
    if job["model"]["base"] == "embedded":
        job["model"]["local_files_only"] = True
    return job, t("method.preset_used", method=method_label(t, cfg.network.type), epochs=cfg.training.epochs)


def vram_line(cfg, t: Translator = EN, vram_gib: float | None = None) -> str:
    """Check job's memory line: the job's predicted peak (engine.system.vram) against this
    machine's GPU (``vram_gib``, else the first CUDA GPU's), in the page's language."""
    from engine.system.vram import GIB, fits, gpu_memory_gib, predict_vram

    try:
        p = predict_vram(cfg)
    except Exception as err:  # noqa: BLE001 - a forecast; Start stays possible
        return t("method.vram_unknown", error=describe_error(err, t))
    total = vram_gib if vram_gib is not None else gpu_memory_gib()
    if total is None:
        verdict, of = t("method.vram_no_gpu"), ""
    else:
        verdict = t("method.vram_fits") if fits(p, total) else t("method.vram_too_big")
        of = t("method.vram_of", total=f"{total:.1f}")

    def gib(n: int) -> str:
        return f"{n / GIB:.2f}"

    return t("method.vram", peak=f"{p.peak_gib:.1f}", of=of, verdict=verdict, weights=gib(p.weights),
             trained=gib(p.trainable), optimizer=gib(p.optimizer), activations=gib(p.activations),
             margin=gib(p.margin))
