"""Export a trained file as a shareable folder: the model, A1111 sidecar + preview, sample
images with A1111 ``parameters`` text, README.md / card.json / card.html.

The folder is what a user uploads (Civitai, Hugging Face) or copies into A1111: everything in
it is named after the model file, so ``<name>.safetensors``, ``<name>.json`` and
``<name>.preview.png`` can go straight into ``models/Lora``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from engine.config.job import JOB_SUFFIX, ConfigError, JobConfig, load_config
from engine.data.words import has_word, replace_word, without_words
from engine.export.card_facts import CardError, CardFacts, gather_facts
from engine.export.card_render import CardBleed, CardInfo, CardSample, card_html, card_json, readme, sidecar, usage_tag
from engine.fileio import atomic_write, atomic_write_bytes
from engine.methods import usage_of


@dataclass
class SampleSettings:
    prompts: list[str] = field(default_factory=list)  # empty: the trigger words
    negative: str = ""
    count: int = 2  # images per prompt (seed, seed + 1, ...)
    seed: int = 42
    steps: int = 20
    cfg_scale: float = 7.0
    size: int | None = None  # None: the job's resolution, else 512
    sampler: str = "euler_a"

    @classmethod
    def from_job(cls, job: JobConfig | None, count: int = 2) -> "SampleSettings":
        """The run's own sampling settings (its [sample] section: prompts, steps, CFG, sampler,
        seed, size): the card shows what the user watched during training."""
        if job is None:
            return cls(count=count)
        from engine.generate.prompts import parse_prompt_line
        from engine.generate.sampler import SampleSpec

        s = job.sample
        specs = [parse_prompt_line(line, SampleSpec("", seed=s.seed, steps=s.steps, cfg_scale=s.cfg_scale,
                                                    width=job.dataset.resolution, height=job.dataset.resolution))
                 for line in s.prompts]
        first = specs[0] if specs else None
        return cls(prompts=[p.prompt for p in specs], negative=first.negative if first else "", count=count,
                   seed=s.seed, steps=first.steps if first else s.steps,
                   cfg_scale=first.cfg_scale if first else s.cfg_scale,
                   size=first.width if first else job.dataset.resolution, sampler=s.sampler)

    @classmethod
    def usual(cls, job: JobConfig | None, base: str | None, count: int = 2) -> "SampleSettings":
        """What the card draws with unless told otherwise: the run's own sampling when it had
        sample prompts (what the user watched), else what the base draws best with
        (engine.generate.sampling_defaults: CFG 5 and 64 px on the embedded model, not SD's 7)."""
        if job is not None and job.sample.prompts:
            return cls.from_job(job, count)
        from engine.generate.sampling_defaults import for_base

        d = for_base(base or (job.model.base if job is not None else ""))
        return cls(count=count, steps=d.steps, cfg_scale=d.cfg_scale,
                   size=job.dataset.resolution if job is not None else d.size)


@dataclass
class CardExport:
    folder: Path
    model: Path
    files: dict[str, Path]
    facts: CardFacts
    samples: list[CardSample]
    bleed: list[CardBleed] = field(default_factory=list)


def job_path_for(model_file: Path) -> Path | None:
    """The ``<name>_job.toml`` the trainer wrote beside its outputs, if one matches this file
    (epoch files ``name-000003`` and picked copies included)."""
    model_file = Path(model_file)
    names = [model_file.stem, re.sub(r"-\d{6}$", "", model_file.stem)]
    if model_file.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(model_file), "pt") as f:
                picked = (f.metadata() or {}).get("ss_picked_from", "")
            names.append(re.sub(r"-\d{6}$", "", Path(picked).stem))
        except Exception:
            pass
    for name in dict.fromkeys(n for n in names if n):
        candidate = model_file.parent / f"{name}{JOB_SUFFIX}"
        if candidate.is_file():
            return candidate
    return None


def load_job_for(model_file: Path, job: Path | None = None) -> JobConfig | None:
    path = Path(job) if job else job_path_for(model_file)
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError as err:
        raise CardError(f"{path}: {err}", "card_job_invalid", path=path, error=err) from None


def _copy_model(src: Path, dest: Path) -> Path:
    """Hard link when possible (a checkpoint can be gigabytes), else an atomic copy."""
    if dest.exists() and dest.samefile(src):
        return dest
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
        return dest
    except OSError:
        return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def _prompt_for_display(facts: CardFacts, prompt: str) -> str:
    tag = usage_tag(facts)
    if usage_of(facts.kind) == "embedding":
        word = facts.trigger_words[0]
        return replace_word(prompt, word, tag, count=1, not_after=r"\w(") if tag != word else prompt
    return f"{prompt} {tag}".strip() if tag else prompt


def control_prompts(prompts: list[str], trigger_words: list[str]) -> list[str]:
    """The sample prompts that hold a trigger word, without it: what the file should leave alone."""
    out = []
    for prompt in prompts:
        text = without_words(prompt, trigger_words)
        if text != prompt and text and text not in out:
            out.append(text)
    return out


def measure_bleed(pipe, swapper, prompts: list[str], settings: SampleSettings, size: int,
                  weight: float) -> list[CardBleed]:
    """Each control prompt drawn with the file at 0 and at ``weight``, same seeds: the mean
    pixel change (0-100), the grid's bleed figure."""
    from engine.generate.grid_summary import bleed
    from engine.generate.sampler import SampleSpec, generate_batch

    out = []
    for prompt in prompts:
        specs = [SampleSpec(prompt, settings.negative, settings.seed + i, settings.steps, settings.cfg_scale,
                            size, size) for i in range(settings.count)]
        drawn = {}
        for w in (0.0, weight):
            swapper.set_weight(w)
            drawn[w] = generate_batch(pipe, specs, encode=swapper.encode)
        out.append(CardBleed(prompt, round(bleed(drawn[weight], drawn[0.0]), 1), weight, len(specs)))
    swapper.set_weight(weight)
    return out


def make_samples(facts: CardFacts, base: str, folder: Path, settings: SampleSettings,
                 job: JobConfig | None, local_files_only: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[CardSample], list[CardBleed]]:
    """Generate the card's images with the file applied at its recommended weight, and for a
    network (LoRA, LyCORIS, hypernetwork) the bleed into its prompts without the trigger."""
    from engine.generate.prompts import a1111_parameters, save_png_with_parameters
    from engine.generate.sampler import SampleSpec, build_pipeline, generate_batch
    from engine.generate.swappers import NetworkSwapper
    from engine.models.loader import load_sd_components

    is_checkpoint = usage_of(facts.kind) == "checkpoint"
    vae = job.model.vae if job is not None and not is_checkpoint else None  # a checkpoint holds its own
    model = load_sd_components(str(facts.file) if is_checkpoint else base, local_files_only=local_files_only,
                               vae=vae, allow_pickle=bool(job and job.model.allow_pickle))
    swapper = None
    if not is_checkpoint:
        swapper = NetworkSwapper(model, local_files_only=local_files_only)
        swapper.load(facts.file)
        swapper.set_weight(facts.preferred_weight)
    pipe = build_pipeline(model, scheduler=settings.sampler)
    size = settings.size or (job.dataset.resolution if job else 512)
    prompts = settings.prompts or [", ".join(facts.trigger_words) or facts.name]
    if usage_of(facts.kind) == "embedding":
        word = facts.trigger_words[0]
        prompts = [p if has_word(p, word) else f"{word}, {p}" for p in prompts]
    base_hash = facts.hashes["SHA256"].lower() if is_checkpoint else facts.base_model_hash
    lora_hashes = ({facts.file.stem: facts.hashes["AutoV3"].lower()}
                   if usage_of(facts.kind) == "network" and "AutoV3" in facts.hashes else None)
    out: list[CardSample] = []
    total = len(prompts) * settings.count
    for p_index, prompt in enumerate(prompts):
        specs = [SampleSpec(prompt, settings.negative, settings.seed + i, settings.steps,
                            settings.cfg_scale, size, size) for i in range(settings.count)]
        images = generate_batch(pipe, specs, encode=swapper.encode if swapper else None)
        for i, (spec, image) in enumerate(zip(specs, images)):
            shown = replace(spec, prompt=_prompt_for_display(facts, spec.prompt))
            text = a1111_parameters(shown, settings.sampler, model_name=Path(model.name).stem,
                                    model_hash=base_hash, lora_hashes=lora_hashes)
            rel = Path("samples") / f"{facts.file.stem}_{p_index:02d}_{i:02d}.png"
            save_png_with_parameters(image, folder / rel, text)
            out.append(CardSample(rel, shown.prompt, spec.negative, spec.seed, spec.steps,
                                  settings.sampler, spec.cfg_scale, spec.width, spec.height))
            if progress:
                progress(len(out), total)
    bleeds = usage_of(facts.kind) in ("network", "hypernetwork")  # an embedding only acts through its word
    controls = control_prompts(prompts, facts.trigger_words) if bleeds else []
    return out, (measure_bleed(pipe, swapper, controls, settings, size, facts.preferred_weight)
                 if swapper and controls else [])


def export_card(model_file: Path, out_dir: Path, info: CardInfo | None = None,
                job: JobConfig | None = None, base: str | None = None,
                samples: SampleSettings | None = None, preferred_weight: float | None = None,
                local_files_only: bool = False,
                progress: Callable[[int, int], None] | None = None, lang: str = "en") -> CardExport:
    """Write ``out_dir/<stem>/`` and return what was written. ``base`` (default: the job's base
    model) is needed for sample images; without either, the card has no samples. ``lang``: the
    language of README.md and card.html (the sidecar and card.json keep their fixed keys)."""
    from engine.i18n import Translator

    t = Translator(lang)
    info = info or CardInfo()
    model_file = Path(model_file)
    facts = gather_facts(model_file, job, preferred_weight)
    if not info.author and job is not None:
        info = info.model_copy(update={"author": job.output.author})
    if not info.description and job is not None:
        info = info.model_copy(update={"description": job.output.description})
    folder = Path(out_dir) / model_file.stem
    folder.mkdir(parents=True, exist_ok=True)
    model_copy = _copy_model(model_file, folder / model_file.name)
    base = base or (job.model.base if job else None)
    settings = samples or SampleSettings()
    made: list[CardSample] = []
    leaks: list[CardBleed] = []
    if settings.count > 0 and (base or usage_of(facts.kind) == "checkpoint"):
        made, leaks = make_samples(facts, base or "", folder, settings, job, local_files_only, progress)
    files = {"model": model_copy}
    if made:
        files["preview"] = atomic_write(folder / f"{model_file.stem}.preview.png",
                                        lambda tmp: shutil.copyfile(folder / made[0].path, tmp))
    files["sidecar"] = atomic_write_bytes(folder / f"{model_file.stem}.json", json.dumps(
        sidecar(facts, info), indent=4, ensure_ascii=False).encode("utf-8"))
    files["readme"] = atomic_write_bytes(folder / "README.md", readme(facts, info, made, t, leaks).encode("utf-8"))
    files["card_json"] = atomic_write_bytes(folder / "card.json", json.dumps(
        card_json(facts, info, made, leaks), indent=2, ensure_ascii=False).encode("utf-8"))
    files["card_html"] = atomic_write_bytes(folder / "card.html",
                                            card_html(facts, info, made, t, leaks).encode("utf-8"))
    return CardExport(folder, model_copy, files, facts, made, leaks)
