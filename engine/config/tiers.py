"""Hardware tier presets: sparse TOML deltas over the JobConfig defaults.

A tier file lists only the keys it changes (presets/tiers/8gb.toml sets fp16, gradient
checkpointing, ...). Its top level is sized for SD 1.x/2.x; a ``[family.<id>]`` table (e.g.
``[family.sdxl]``) holds what differs for that model family, laid over the top level when the
job's base is of that family. Layers are merged in this order, later wins:

    built-in defaults  <  job_dict  <  tier file (+ its family table)  <  hardware fixes  <  the user's own values

so a value the user wrote in their job file is never replaced by a tier. Whether a tier's job
fits its cards is not written anywhere: engine.system.vram predicts it (tests hold every
tier/family pair to it).
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any, Optional, Union

from engine.config.job import ConfigError, parse_config

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
TIERS_DIR = PRESETS_DIR / "tiers"

# The smallest job a tier is validated against: the two fields without defaults.
_MINIMAL_JOB = {"model": {"base": "tier-check/model"}, "dataset": {"path": "tier-check-data"}}


def _tier_sort_key(name: str) -> tuple[int, str]:
    if name == "cpu":
        return (-1, name)
    match = re.match(r"(\d+)", name)
    return (int(match.group(1)) if match else 10**6, name)


def list_tiers() -> list[str]:
    """Tier names from presets/tiers/*.toml, smallest first (cpu, 4gb, ..., 24gb+)."""
    return sorted((p.stem for p in TIERS_DIR.glob("*.toml")), key=_tier_sort_key)


def deep_merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``delta`` over ``base``; nested tables merge key by key, other values replace.

    Neither input is modified and the result shares no mutable values with them.
    """
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _tier_path(name: str) -> Path:
    tiers = list_tiers()
    if name not in tiers:
        raise ValueError(f"unknown tier {name!r}; valid tiers: {', '.join(tiers)}")
    return TIERS_DIR / f"{name}.toml"


def validate_tier(name: str, delta: dict[str, Any]) -> None:
    """Raise ConfigError (naming the file) unless ``delta`` over a minimal job is a valid JobConfig."""
    try:
        parse_config(deep_merge(_MINIMAL_JOB, delta))
    except ConfigError as err:
        raise ConfigError(f"presets/tiers/{name}.toml is not a valid preset: {err}") from None


def load_tier(name: str, family: Optional[str] = None) -> dict[str, Any]:
    """The sparse delta of one tier (only the keys it changes) for a base of ``family`` (its
    ``[family.<id>]`` table over the rest), checked against the schema."""
    from engine.models import families

    path = _tier_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"presets/tiers/{name}.toml: not valid TOML: {err}") from None
    per_family = data.pop("family", {})
    unknown = set(per_family) - set(families.BY_ID)
    if unknown:
        raise ConfigError(f"presets/tiers/{name}.toml: [family.{sorted(unknown)[0]}] is not a model family "
                          f"({', '.join(families.BY_ID)})")
    delta = deep_merge(data, per_family.get(family, {})) if family else data
    validate_tier(name, delta)
    return delta


def job_family(*layers: Optional[dict[str, Any]]) -> Optional[str]:
    """The model family a job's tier should be sized for: model.family, else the family read from
    the base's files (no network); None when neither says."""
    from engine.models.loader import family_of_base

    model: dict[str, Any] = {}
    for layer in layers:
        model = {**model, **((layer or {}).get("model") or {})}
    if model.get("family", "auto") != "auto":
        return str(model["family"])
    if model.get("base"):
        found = family_of_base(str(model["base"]))
        return None if found == "unknown" else found
    return None


def _network_type(*layers: Optional[dict[str, Any]]) -> str:
    kind = "lora"
    for layer in layers:
        net = (layer or {}).get("network")
        if isinstance(net, dict) and "type" in net:
            kind = net["type"]
    return kind


def apply_tier(job_dict: dict[str, Any], tier: Union[str, Any],
               user_overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Merge a tier under the user's values: job_dict < tier (< its hardware fixes) < user_overrides.

    ``job_dict`` is the base layer (``{}`` for plain defaults, or a method preset); pass the user's
    own job file as ``user_overrides`` so none of its values are replaced. ``tier`` is a tier name
    or a ``hardware.TierChoice``, whose ``overrides`` (e.g. fp16 on a card without bf16) are
    layered right over the tier file. Returns a new dict; parse it with ``parse_config``.
    """
    name = getattr(tier, "name", tier)
    delta = load_tier(name, job_family(job_dict, user_overrides))
    fixes = getattr(tier, "overrides", None) or {}
    delta = deep_merge(delta, fixes)
    if _network_type(job_dict, user_overrides) != "lora":
        # Tier network keys (dim/alpha) describe a LoRA; another method has its own fields.
        delta.pop("network", None)
    merged = deep_merge(deep_merge(job_dict, delta), user_overrides or {})
    return keep_text_encoder_cache_valid(merged, user_overrides or {})


def keep_text_encoder_cache_valid(job: dict[str, Any], user: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A tier caches the text encoders' outputs only together with a frozen text encoder
    (``network.train_unet_only``) and fixed captions; where the job trains the encoders anyway
    (another method, or the user's own choice) or changes its captions every step (shuffle,
    dropout), the tier's caching is dropped rather than making the job invalid."""
    from engine.data.captions import caption_is_fixed

    training, chosen = job.get("training") or {}, (user or {}).get("training") or {}
    if not training.get("cache_text_encoder_outputs") or "cache_text_encoder_outputs" in chosen:
        return job
    net, data = job.get("network") or {}, job.get("dataset") or {}
    fixed = caption_is_fixed(bool(data.get("shuffle_caption")), float(data.get("caption_dropout_rate") or 0),
                             float(data.get("tag_dropout_rate") or 0))
    if fixed and net.get("type", "lora") == "lora" and net.get("train_unet_only"):
        return job
    job = copy.deepcopy(job)
    job["training"].pop("cache_text_encoder_outputs")
    return job
