"""The job as the wizard edits it: ONE job (a plain dict, as TOML would give it) and its views.

Steps 1-3 (base model, dataset, the fields) and the expert TOML all edit the same job; each
view is computed from it, so what step 4 shows above Start is what trains. Which fields the form
shows is listed once here (``FIELDS``, by job path); their kind, range, default and the methods
they apply to come from the job schema (engine.config.job), their words from the catalogue
(``field.<section>.<name>.label`` / ``.why`` and, for the beginner fields, ``.range`` / ``.high``
/ ``.low`` advice). Kept free of Gradio so it is tested directly.
"""
from __future__ import annotations

import copy
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engine.config.job import JobConfig, network_types, parse_config
from engine.i18n import EN, Translator
from engine.methods import usage_of
from engine.methods.lycoris import LycorisNetworkConfig

Path2 = tuple[str, str]


@dataclass(frozen=True)
class FormField:
    section: str
    name: str
    advanced: bool = False
    only_for: tuple[str, ...] = ()   # methods that use it beyond the schema's own rule (below)
    not_usage: str = ""  # methods of this usage (engine.methods) never use it

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def key(self) -> str:
        """Widget id and catalogue key: ``training-epochs`` / ``field.training.epochs``."""
        return f"{self.section}-{self.name}"


F = FormField
LYCORIS_TYPES: tuple[str, ...] = typing.get_args(LycorisNetworkConfig.model_fields["type"].annotation)
FIELDS: list[FormField] = [
    # the beginner view: what every LoRA guide asks for
    F("output", "name"), F("output", "trigger_phrase"), F("dataset", "resolution"), F("training", "epochs"),
    F("training", "batch_size"), F("optimizer", "lr"), F("network", "dim"), F("network", "alpha"),
    F("network", "token"), F("network", "init_text"), F("network", "num_vectors"),
    F("network", "layer_structure"), F("network", "activation"), F("network", "layer_norm"),
    F("network", "train_text_encoder"),
    # embeddings only add words: a prompt without them cannot change, so nothing to preserve
    F("dataset", "prior_preservation", not_usage="embedding"),
    F("dataset", "keep_prompts", True, not_usage="embedding"),
    F("dataset", "class_prompt", only_for=("dreambooth",)),
    F("dataset", "prior_loss_weight", only_for=("dreambooth",)),
    F("output", "save_every_n_epochs"), F("training", "seed"), F("sample", "prompts"),
    # "Advanced": what kohya_ss users set most
    F("optimizer", "type", True), F("optimizer", "unet_lr", True), F("optimizer", "text_encoder_lr", True),
    F("scheduler", "type", True), F("scheduler", "warmup_steps", True),
    F("training", "mixed_precision", True), F("training", "gradient_checkpointing", True),
    F("training", "quantize_base", True),
    F("network", "conv_dim", True), F("network", "conv_alpha", True), F("network", "max_norm", True),
    F("network", "loraplus_lr_ratio", True), F("network", "loraplus_unet_lr_ratio", True),
    F("network", "loraplus_text_encoder_lr_ratio", True), F("network", "dora_wd", True, only_for=LYCORIS_TYPES),
    F("network", "block_dims", True),
    F("network", "block_alphas", True), F("network", "conv_block_dims", True), F("network", "conv_block_alphas", True),
    F("network", "down_lr_weight", True),
    F("network", "mid_lr_weight", True), F("network", "up_lr_weight", True),
    F("dataset", "enable_bucket", True), F("dataset", "flip_aug", True), F("dataset", "shuffle_caption", True),
    F("dataset", "keep_tokens", True), F("training", "noise_offset", True), F("training", "min_snr_gamma", True),
    *(F("training", name, True) for name in (
        "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma", "zero_terminal_snr",
        "debiased_estimation_loss", "loss_type", "huber_schedule", "huber_c", "huber_scale", "min_timestep",
        "max_timestep")),
    F("training", "clip_skip", True), F("output", "save_state", True), F("output", "keep_states", True),
    F("output", "save_precision", True), F("sample", "sampler", True), F("sample", "every_n_epochs", True),
    F("sample", "every_n_steps", True), F("dataset", "reg_path", True),
    *(F("dataset", name, True) for name in ("validation_split", "validation_path", "validation_seed")),
    *(F("training", name, True) for name in ("validate_every_n_epochs", "validate_every_n_steps")),
    F("training", "ema", True), F("training", "ema_decay", True),
    F("training", "masked_loss", True), F("dataset", "alpha_mask", True), F("dataset", "mask_path", True),
    F("model", "vae", True),
]
BY_KEY = {f.key: f for f in FIELDS}


# ---------------------------------------------------------------- what the schema says

def network_classes() -> dict[str, type[BaseModel]]:
    """network.type -> its config class (the members of the job's discriminated union)."""
    union = JobConfig.model_fields["network"].annotation
    out = {}
    for cls in typing.get_args(union):
        for value in typing.get_args(cls.model_fields["type"].annotation):
            out[value] = cls
    return {t: out[t] for t in network_types() if t in out}


METHODS: list[str] = list(network_classes())  # the methods a job can have, in the schema's order


def field_info(field: FormField, method: str) -> FieldInfo | None:
    """The schema's definition of ``field`` for a job of ``method`` (None: not in that method)."""
    if field.section == "network":
        return network_classes()[method].model_fields.get(field.name)
    section = JobConfig.model_fields[field.section].annotation
    return section.model_fields.get(field.name)


def applies(field: FormField, method: str) -> bool:
    """Whether the form shows ``field`` for ``method``: network fields where that method's schema
    has them (dim and alpha for LoRA/LyCORIS, token for Textual Inversion, ...)."""
    return (field_info(field, method) is not None and (not field.only_for or method in field.only_for)
            and usage_of(method) != field.not_usage)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


Kind = Literal["bool", "int", "float", "choice", "text", "lines", "numbers"]


def kind_of(info: FieldInfo) -> Kind:
    tp, _ = _base_type(info.annotation)
    if typing.get_origin(tp) is Literal:
        return "choice"
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if typing.get_origin(tp) is list:
        return "numbers" if typing.get_args(tp)[0] in (int, float) else "lines"
    return "text"


def choices(info: FieldInfo) -> list[str]:
    return list(typing.get_args(_base_type(info.annotation)[0]))


def limits(info: FieldInfo) -> tuple[float | None, float | None]:
    """(minimum, maximum) from the schema's ge/gt/le/lt."""
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", getattr(m, "gt", low))
        high = getattr(m, "le", getattr(m, "lt", high))
    return low, high


def default_of(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


# ---------------------------------------------------------------- values between job and widgets

def get(job: dict[str, Any], field: FormField, method: str | None = None) -> Any:
    """The value the job has for ``field`` (the schema's default where the job is silent)."""
    info = field_info(field, method or method_of(job))
    value = job.get(field.section, {}).get(field.name)
    return default_of(info) if value is None and info is not None else value


def to_widget(value: Any, info: FieldInfo) -> Any:
    kind = kind_of(info)
    if value is None:
        return None if kind in ("int", "float") else ("" if kind in ("text", "lines", "numbers") else value)
    if kind == "lines":
        return "\n".join(value)
    if kind == "numbers":
        return ", ".join(f"{v:g}" for v in value)
    return value


def from_widget(raw: Any, info: FieldInfo) -> Any:
    """A widget's value as the job holds it; empty means "not set" (None) where the schema
    allows it. Nothing is checked here: the job's own validation says what is wrong."""
    kind = kind_of(info)
    _, optional = _base_type(info.annotation)
    if raw is None or (isinstance(raw, str) and not raw.strip() and kind not in ("lines", "text")):
        return None
    if kind == "int" and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if kind == "float" and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if kind == "lines":
        return [line.strip() for line in str(raw).splitlines() if line.strip()]
    if kind == "numbers":
        try:
            return [float(v) for v in str(raw).replace(";", ",").split(",") if v.strip()]
        except ValueError:
            return str(raw)  # the job's validation names the field
    if kind == "text" and optional and not str(raw).strip():
        return None
    return raw


# ---------------------------------------------------------------- edits

def method_of(job: dict[str, Any]) -> str:
    return job.get("network", {}).get("type", "lora")


def set_value(job: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A new job with ``section.name`` set (None removes it: the schema's default applies)."""
    section, name = path.split(".", 1)
    out = copy.deepcopy(job)
    table = out.setdefault(section, {})
    if value is None:
        table.pop(name, None)
        if not table and section not in ("model", "dataset"):
            out.pop(section)
    else:
        table[name] = value
    return out


def set_method(job: dict[str, Any], method: str) -> dict[str, Any]:
    """Switch the method, keeping every network setting the new method also has (dim, alpha,
    dropout between LoRA kinds) and dropping the rest; a word-learning method gets its token
    from the trigger word."""
    cls = network_classes()[method]
    network = {k: v for k, v in job.get("network", {}).items() if k in cls.model_fields and k != "type"}
    if "token" in cls.model_fields and "token" not in network:
        trigger = job.get("output", {}).get("trigger_phrase", "")
        network["token"] = "".join(ch for ch in trigger.split(",")[0] if ch.isalnum() or ch in "_-") or "zkz"
    out = copy.deepcopy(job)
    out["network"] = {"type": method, **network}
    return out


def apply_fields(job: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """``edits``: {field key: widget value} -> the job with those values."""
    method = method_of(job)
    for key, raw in edits.items():
        field = BY_KEY[key]
        info = field_info(field, method)
        if info is not None:
            job = set_value(job, field.path, from_widget(raw, info))
    return job


def form_values(job: dict[str, Any]) -> dict[str, Any]:
    """{field key: widget value} for every field of the job's method."""
    method = method_of(job)
    return {f.key: to_widget(get(job, f, method), field_info(f, method)) for f in FIELDS if applies(f, method)}


def expert_only(job: dict[str, Any]) -> list[str]:
    """Settings the job has that the form does not show (set in the expert TOML or by a preset
    or tier), as ``section.name = value``; paths and the method are shown elsewhere."""
    method = method_of(job)
    shown = {f.path for f in FIELDS if applies(f, method)} | {
        "model.base", "dataset.path", "network.type", "output.dir", "model.local_files_only"}
    out = []
    for section, table in job.items():
        if not isinstance(table, dict):
            continue
        for name, value in table.items():
            info = field_info(FormField(section, name), method) if section in JobConfig.model_fields else None
            default = default_of(info) if info is not None else object()
            if f"{section}.{name}" not in shown and value != default:
                out.append(f"{section}.{name} = {value!r}")
    return out


# ---------------------------------------------------------------- what the page says about the job

def field_help(t: Translator, field: FormField, method: str, tier_values: dict[str, Any] | None = None,
               tier: str = "") -> str:
    """The guidance under a field: what it does, the advice (range, symptoms of too high / too
    low) where the catalogue has it, the allowed range from the schema, and the tier's value."""
    base = f"field.{field.path}"
    parts = [t(f"{base}.why")]
    if f"{base}.range" in t.words:
        parts.append(t("method.range", text=t(f"{base}.range")))
        for side in ("high", "low"):  # "-": no telltale symptom on that side
            if t(f"{base}.{side}") != "-":
                parts.append(t(f"method.too_{side}", text=t(f"{base}.{side}")))
    info = field_info(field, method)
    low, high = limits(info) if info is not None else (None, None)
    if low is not None and high is not None:
        parts.append(t("method.allowed", low=_number(low), high=_number(high)))
    elif low is not None:
        parts.append(t("method.allowed_from", low=_number(low)))
    if tier:
        value = (tier_values or {}).get(field.section, {}).get(field.name)
        parts.append(t("method.tier_value", tier=tier, value=value) if value is not None
                     else t("method.tier_unset", tier=tier))
    return " ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def method_label(t: Translator, method: str) -> str:
    return t(f"method.name_{method}")


def choice_label(t: Translator, field: FormField, value: str) -> str:
    """A dropdown value in the page's language where the catalogue words it, else as is."""
    key = f"field.{field.path}.choice_{value}"
    return t(key) if key in t.words else str(value)


def steps_of(cfg: JobConfig, per_epoch: int) -> tuple[int, int]:
    """(steps per epoch, total steps) as the trainer counts them."""
    t = cfg.training
    per_step = t.batch_size * t.gradient_accumulation_steps
    per = math.ceil(per_epoch / per_step) if per_epoch else 0
    total = per * t.epochs
    return per, min(total, t.max_steps) if t.max_steps else total


def parse_job(job: dict[str, Any]) -> JobConfig:
    """The job checked field by field (ConfigError names what is wrong)."""
    return parse_config(job)


__all__ = ["FIELDS", "BY_KEY", "FormField", "METHODS", "apply_fields", "applies", "expert_only",
           "field_help", "field_info", "form_values", "kind_of", "method_of", "set_method", "set_value",
           "steps_of", "EN"]
