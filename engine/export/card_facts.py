"""Everything a model card states about a trained file, read from the file itself (metadata,
tensors, hashes) and, where the file cannot say it, from the job that trained it.

Why the file first: a card must describe the file being shared, also when it was renamed by
"pick this epoch" or trained long ago. The job (``<name>_job.toml`` beside the outputs) fills
in what only hypernetwork / embedding / checkpoint files lack (their formats carry no kohya
``ss_*`` fields).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.job import JobConfig
from engine.data.words import trigger_words
from engine.export.file_kind import read_kind
from engine.export.hashes import file_digests, legacy_hash
from engine.export.metadata import NOISE_AND_LOSS_KEYS, TIMESTEP_RANGE_KEY
from engine.i18n import Explained
from engine.methods import usage_of
from engine.models import families

OTHER_KINDS = {"aesthetic": "AestheticGradient"}  # files no training method here makes: Civitai type


class CardError(Explained, ValueError):
    pass


@dataclass
class CardFacts:
    file: Path
    name: str
    kind: str  # a NETWORK_TYPES value, or "aesthetic"
    family: str  # sd15 | sd2 | sdxl | unknown
    trigger_words: list[str]
    preferred_weight: float
    epochs: int | None
    steps: int | None
    params: dict[str, Any]  # Civitai's training parameter names
    tag_counts: list[tuple[str, int]]  # most frequent first
    dataset_dirs: dict[str, dict[str, int]]
    hashes: dict[str, str]
    precision: str
    base_model_name: str = ""
    base_model_hash: str = ""
    vae_name: str = ""  # a separate VAE the file was trained with ("" = the base's own)
    notes: list[str] = field(default_factory=list)

    @property
    def civitai_type(self) -> str:
        from engine.methods import methods

        if self.kind in methods():
            return methods()[self.kind].civitai_type
        return OTHER_KINDS.get(self.kind, "Other")

    @property
    def base_model(self) -> str:
        return families.BY_ID[self.family].civitai_base_model if self.family in families.BY_ID else "Other"

    @property
    def sd_version(self) -> str:
        return families.BY_ID[self.family].a1111_sd_version if self.family in families.BY_ID else "Unknown"

    @property
    def num_images(self) -> int:
        return sum(d.get("img_count", 0) for d in self.dataset_dirs.values())

    @property
    def size_kb(self) -> float:
        return round(self.file.stat().st_size / 1024, 2)


def file_hashes(path: Path) -> dict[str, str]:
    """Civitai's hash names, upper case as Civitai shows them. AutoV3 only for safetensors."""
    path = Path(path)
    sha, crc, data_sha = file_digests(path, path.suffix.lower() == ".safetensors")
    out = {"AutoV1": legacy_hash(path).upper(), "AutoV2": sha[:10].upper(), "SHA256": sha.upper(),
           "CRC32": f"{crc:08X}"}
    if data_sha is not None:
        out["AutoV3"] = data_sha[:12].upper()
    return out


def _read(path: Path) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(kind, metadata, extra facts) from the file's own contents (one read, engine/file_kind)."""
    found = read_kind(path)
    if found.error:
        raise CardError(f"{path.name}: cannot read ({found.error})", "card_unreadable", name=path.name)
    if path.suffix.lower() == ".safetensors":
        meta, keys = found.meta, found.keys
        dtype = found.dtype.lower()
        extra = {"precision": {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}.get(dtype, dtype)}
        if found.kind in ("lora", "lycoris"):
            if meta.get("ss_network_module") == "lycoris.kohya":
                algo = json.loads(meta.get("ss_network_args") or "{}").get("algo", "locon")
                return algo if algo in ("locon", "loha", "lokr") else "locon", meta, extra
            if found.kind == "lycoris":  # no kohya metadata: the module types tell
                return ("loha" if any(".hada_" in k for k in keys) else
                        "lokr" if any(".lokr_" in k for k in keys) else "locon"), meta, extra
            return "lora", meta, extra
        if found.kind == "embedding":
            extra["family"] = "sdxl" if "clip_g" in keys else None
            return "textual_inversion", meta, extra
        if found.kind in ("aesthetic", "checkpoint"):
            return {"checkpoint": "dreambooth"}.get(found.kind, found.kind), meta, extra
        raise CardError(f"{path.name}: not a LoRA, LyCORIS, embedding or checkpoint file", "card_not_model",
                        name=path.name)
    data = found.data
    if found.kind == "aesthetic":
        return "aesthetic", {}, {"precision": "fp32"}
    if found.kind in ("embedding", "hypernetwork"):
        meta = {"name": str(data.get("name", "")), "ss_steps": str(data.get("step", ""))}
        extra = {"precision": "fp32", "base": data.get("sd_checkpoint_name")}
        if found.kind == "hypernetwork":
            return "hypernetwork", meta, extra | {"family": families.DEFAULT.id}
        return "textual_inversion", meta, extra
    raise CardError(f"{path.name}: not a hypernetwork, embedding or aesthetic embedding file",
                    "card_not_model", name=path.name)


def _family(meta: dict[str, str], extra: dict[str, Any], job: JobConfig | None) -> str:
    if extra.get("family"):
        return extra["family"]
    text = " ".join((meta.get("ss_base_model_version", ""), meta.get("modelspec.architecture", "")))
    named = families.from_metadata_text(text)
    if named is not None:
        return named.id
    if job is not None and job.model.family != "auto":
        return job.model.family
    if job is not None:
        from engine.models.loader import family_of_base

        return family_of_base(job.model.base)
    return "unknown"


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _trigger_words(meta: dict[str, str], kind: str, name: str, job: JobConfig | None,
                   dirs: dict[str, dict[str, int]]) -> list[str]:
    """What to type: the embedding's word for TI; else the trigger phrase; else concept names."""
    if usage_of(kind) == "embedding":
        return [meta.get("name") or name]
    phrase = meta.get("modelspec.trigger_phrase") or (job.output.trigger_phrase if job else "")
    if phrase:
        return trigger_words(phrase)
    concepts = [re.sub(r"^\d+_", "", d) for d in dirs]
    return [c for c in dict.fromkeys(concepts) if c]


def _params(meta: dict[str, str], kind: str, job: JobConfig | None,
            dirs: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Civitai's training parameter names; the job wins, the file's ss_* fill in."""
    p: dict[str, Any] = {}
    if job is not None:
        net, o, t, d = job.network, job.optimizer, job.training, job.dataset
        p = {"unetLR": o.unet_lr or o.lr, "textEncoderLR": o.text_encoder_lr or o.lr,
             "optimizerType": o.type, "lrScheduler": job.scheduler.type, "maxTrainEpochs": t.epochs,
             "resolution": d.resolution, "enableBucket": d.enable_bucket, "keepTokens": d.keep_tokens,
             "clipSkip": t.clip_skip, "flipAugmentation": d.flip_aug, "noiseOffset": t.noise_offset,
             "minSnrGamma": t.min_snr_gamma or 0, "shuffleCaption": d.shuffle_caption,
             "trainBatchSize": t.batch_size, "targetSteps": t.max_steps}
        if hasattr(net, "dim"):
            p |= {"networkDim": net.dim, "networkAlpha": net.alpha}
        if getattr(net, "train_unet_only", False):
            p["textEncoderLR"] = 0
    elif meta.get("ss_network_module") or meta.get("ss_learning_rate"):
        def f(key, cast=float):
            value = meta.get(key)
            try:
                return cast(value) if value not in (None, "", "None") else None
            except ValueError:
                return value
        boolean = lambda v: v == "True"  # noqa: E731
        res = re.findall(r"\d+", meta.get("ss_resolution", ""))
        p = {"unetLR": f("ss_unet_lr") or f("ss_learning_rate"), "textEncoderLR": f("ss_text_encoder_lr"),
             # "torch.optim.adamw.AdamW(weight_decay=0.01)" -> "AdamW" (the arguments hold dots too)
             "optimizerType": (meta.get("ss_optimizer") or "").split("(")[0].rsplit(".", 1)[-1] or None,
             "networkDim": f("ss_network_dim", int), "networkAlpha": f("ss_network_alpha"),
             "lrScheduler": meta.get("ss_lr_scheduler"), "maxTrainEpochs": f("ss_num_epochs", int),
             "resolution": int(res[0]) if res else None, "enableBucket": f("ss_enable_bucket", boolean),
             "keepTokens": f("ss_keep_tokens", int), "clipSkip": f("ss_clip_skip", int),
             "flipAugmentation": f("ss_flip_aug", boolean), "noiseOffset": f("ss_noise_offset"),
             "minSnrGamma": f("ss_min_snr_gamma") or 0, "shuffleCaption": f("ss_shuffle_caption", boolean),
             "trainBatchSize": f("ss_batch_size_per_device", int),
             "targetSteps": f("ss_max_train_steps", int)}
    p |= _noise_and_loss(job.training.model_dump() if job is not None else _noise_and_loss_from(meta))
    p |= {_camel(k): v for k, v in _network_extras(meta, job).items()}
    p |= _averaging_and_validation(meta, job)
    if dirs:
        p["numRepeats"] = max(d.get("n_repeats", 1) for d in dirs.values())
    p["loraType"] = kind if usage_of(kind) == "network" else None
    if kind == "lora" and '"conv_dim"' in meta.get("ss_network_args", ""):
        p["loraType"] = "locon"  # kohya's LoRA with 3x3 conv layers is what Civitai calls LoCon
    return {k: v for k, v in p.items() if v is not None}


def _averaging_and_validation(meta: dict[str, str], job: JobConfig | None) -> dict[str, float]:
    """The EMA decay when the file holds the weights' moving average (the job's, else the
    file's), and the file's own validation loss."""
    from engine.export.metadata import EMA_KEY, VALIDATION_LOSS_KEY

    out = {}
    split = job.dataset.validation_split if job is not None else meta.get("ss_validation_split")
    for name, raw in (("emaDecay", job.training.ema_decay if job is not None and job.training.ema
                       else meta.get(EMA_KEY)), ("validationLoss", meta.get(VALIDATION_LOSS_KEY)),
                      ("validationImages", meta.get("ss_num_validation_images")),
                      ("validationSplit", split)):
        try:
            out[name] = float(raw) if raw not in (None, "") else None
        except (TypeError, ValueError):
            continue
    return {k: v for k, v in out.items() if v}  # (0 images / a 0 split: no validation)


def _camel(name: str) -> str:
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)


def _network_extras(meta: dict[str, str], job: JobConfig | None) -> dict[str, Any]:
    """LoRA+ ratios (numbers), block settings (kohya's comma lists) and DoRA that were set: the
    job's, else the file's ss_network_args (where kohya and LyCORIS keep them)."""
    from engine.methods.lora import BLOCK_LISTS

    args: Any = {}
    if job is not None:
        for name in ("loraplus_args", "block_args"):
            args |= getattr(job.network, name)() if hasattr(job.network, name) else {}
        args |= {"dora_wd": "True"} if getattr(job.network, "dora_wd", False) else {}
    else:
        try:
            args = json.loads(meta.get("ss_network_args") or "{}")
        except ValueError:
            pass
    out: dict[str, Any] = {}
    for k, v in (args.items() if isinstance(args, dict) else ()):
        if k in BLOCK_LISTS:
            out[k] = str(v)
        elif k == "dora_wd" and str(v) == "True":
            out["dora"] = True
        elif k.startswith("loraplus_"):
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                continue
    return out


def _noise_and_loss(values: dict[str, Any]) -> dict[str, Any]:
    """camelCase parameters for the options that differ from the schema's defaults; the
    multires discount and the Huber settings only where they are used."""
    from engine.config.job import TrainingConfig

    fields = TrainingConfig.model_fields
    shown = {k: v for k, v in values.items() if k in NOISE_AND_LOSS_KEYS or k in ("min_timestep", "max_timestep")}
    # settings that belong to an option: shown with it (defaults included), else not at all
    parts = {"multires_noise_discount": bool(shown.get("multires_noise_iterations"))} | dict.fromkeys(
        ("huber_schedule", "huber_c", "huber_scale"), shown.get("loss_type") in ("huber", "smooth_l1"))
    out = {k: shown.pop(k) for k, used in parts.items() if k in shown and used}
    out |= {k: v for k, v in shown.items() if k not in parts and v is not None and v != fields[k].default}
    return {_camel(k): v for k, v in out.items()}


def _noise_and_loss_from(meta: dict[str, str]) -> dict[str, Any]:
    """The same options read back from a file's sd-scripts keys (and our timestep range)."""
    from engine.config.job import TrainingConfig

    out: dict[str, Any] = {}
    for name, key in NOISE_AND_LOSS_KEYS.items():
        raw = meta.get(key)
        if raw in (None, "", "None"):
            continue
        kind = type(TrainingConfig.model_fields[name].default)
        try:
            out[name] = (raw == "True") if kind is bool else kind(raw)
        except ValueError:
            continue
    low, _, high = (meta.get(TIMESTEP_RANGE_KEY) or "").partition("-")
    if low.isdigit() and high.isdigit():
        out |= {"min_timestep": int(low), "max_timestep": int(high)}
    return out


def _dataset(meta: dict[str, str], job: JobConfig | None
             ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(dataset dirs, tag frequency per dir): the file's ss_* fields, else the job's dataset."""
    try:
        dirs = json.loads(meta.get("ss_dataset_dirs") or "{}")
        tags = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        dirs, tags = {}, {}
    if not dirs and job is not None:
        from engine.data.folder import DatasetError, scan_dataset

        try:
            index = scan_dataset(job.dataset.path, job.dataset.default_repeats,
                                 job.dataset.caption_extension)
            dirs, tags = index.dataset_dirs(), index.tag_frequency()
        except DatasetError:
            pass  # the dataset moved: the card simply has no dataset section
    return dirs, tags


def gather_facts(path: Path, job: JobConfig | None = None, preferred_weight: float | None = None
                 ) -> CardFacts:
    path = Path(path)
    if not path.is_file():
        raise CardError(f"model file not found: {path}", "card_not_found", path=path)
    kind, meta, extra = _read(path)
    if job is not None and usage_of(kind) == "embedding" == usage_of(job.network.type):
        kind = job.network.type  # an embedding file: the job says which embedding method made it
    name = meta.get("ss_output_name") or meta.get("modelspec.title") or meta.get("name") or path.stem
    dirs, tags = _dataset(meta, job)
    counts: Counter[str] = Counter()
    for per_dir in tags.values():
        counts.update(per_dir)
    weight = preferred_weight
    if weight is None:
        weight = float(meta.get("ss_preferred_weight") or 1.0)
    return CardFacts(
        file=path, name=name, kind=kind, family=_family(meta, extra, job),
        trigger_words=_trigger_words(meta, kind, name, job, dirs), preferred_weight=weight,
        epochs=_int(meta.get("ss_epoch")), steps=_int(meta.get("ss_steps")),
        params=_params(meta, kind, job, dirs), tag_counts=counts.most_common(), dataset_dirs=dirs,
        hashes=file_hashes(path), precision=extra.get("precision", ""),
        base_model_name=meta.get("ss_sd_model_name") or extra.get("base") or
        (job.model.base if job else ""),
        base_model_hash=meta.get("ss_new_sd_model_hash", ""),
        vae_name=meta.get("ss_vae_name") or (Path(job.model.vae).name if job and job.model.vae else ""))
