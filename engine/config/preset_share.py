"""Shareable presets: a job's settings as a sparse TOML with a ``[metadata]`` table, or as a short
copy-paste text code, and the strict import that turns one back into a job.

Why sparse and path-free: a preset travels between people. It lists only what differs from the
defaults (so it stays readable and later default improvements still reach its users) and never
carries a local path (dataset, output, base-model file) or anything secret. It is TOML data
only: importing never runs code or unpickles anything.
"""
from __future__ import annotations

import base64
import re
import tomllib
import zlib
from pathlib import Path
from typing import Any, Callable, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.config.job import ConfigError, JobConfig, ModelConfig, config_to_dict, parse_config, validation_problems
from engine.config.tiers import deep_merge, list_tiers
from engine.i18n import Explained
from engine.models.families import FAMILY_IDS

PRESET_SCHEMA_VERSION = 1
CODE_PREFIX = "LFP1."  # LoRA Forge Preset, code format 1
MAX_PRESET_BYTES = 64 * 1024  # a preset is a few hundred bytes; refuse zip bombs early
# Fields that hold where things are on one machine; the importer supplies its own.
LOCAL_FIELDS = {("model", "config_dir"), ("model", "clip_l"), ("model", "t5xxl"), ("model", "t5_tokenizer"),
                ("dataset", "path"), ("dataset", "reg_path"),
                ("output", "dir"), ("output", "logging_dir")}
# Safety choices that belong to whoever runs the job: never shared, refused in a preset.
PERSONAL_FIELDS = {("model", "allow_pickle")}
_PLACEHOLDER = {"model": {"base": "preset/placeholder"}, "dataset": {"path": "preset-placeholder"}}
_LOCAL_PATH = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\|\.{1,2}[\\/])")


class PresetError(Explained, ValueError):
    pass


class PresetMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)
    author: str = Field("", max_length=80)
    description: str = Field("", max_length=2000)
    method: str = "lora"
    base_family: Literal[(*FAMILY_IDS, "any")] = "any"  # type: ignore[valid-type]
    target_tier: str = Field("any", description="VRAM tier it was tuned for (cpu, 4gb, ... 24gb+)")
    schema_version: int = PRESET_SCHEMA_VERSION


# Preset schema migrations: MIGRATIONS[v] turns a version-v preset dict into version v + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and bool(_LOCAL_PATH.match(value.strip()))


def _diff(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            sub = _diff(value, defaults[key])
            if sub:
                out[key] = sub
        elif key not in defaults or defaults[key] != value:
            out[key] = value
    return out


def _defaults_for(method: str) -> dict[str, Any]:
    from engine.methods import method_of

    job = deep_merge(_PLACEHOLDER, {"network": {"type": method, **method_of(method).placeholder}})
    return config_to_dict(parse_config(job))


def _model_reference_fields() -> list[str]:
    """The model section's fields that name a model (a file, folder or hub id)."""
    return [name for name, info in ModelConfig.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("path") == "model"]


def preset_settings(cfg: JobConfig) -> dict[str, Any]:
    """The job's settings that differ from the defaults, without local paths."""
    from engine.models.loader import EMBEDDED_NAMES, looks_like_path  # the loader's own rule
    method = cfg.network.type
    delta = _diff(config_to_dict(cfg), _defaults_for(method))
    delta.pop("schema_version", None)
    for section, key in LOCAL_FIELDS | PERSONAL_FIELDS:
        delta.get(section, {}).pop(key, None)
    model = delta.get("model", {})
    for key in _model_reference_fields():  # the base, a VAE: a file or folder on this machine is
        value = str(model.get(key, ""))  # dropped; a hub id or "embedded" is shareable
        if value and value not in EMBEDDED_NAMES and looks_like_path(value):
            model.pop(key)
    for section in list(delta):
        if isinstance(delta[section], dict):
            for key, value in list(delta[section].items()):
                if _is_local_path(value):
                    delta[section].pop(key)
            if not delta[section]:
                delta.pop(section)
    if method != "lora":  # the type first: it decides what the other network keys mean
        delta["network"] = {"type": method, **delta.get("network", {})}
    return delta


def export_preset(cfg: JobConfig, name: str, author: str = "", description: str = "",
                  base_family: str = "any", target_tier: str = "any") -> str:
    """The shareable TOML text: ``[metadata]`` first, then the sparse settings."""
    meta = PresetMetadata(name=name, author=author, description=description, method=cfg.network.type,
                          base_family=base_family, target_tier=target_tier)
    _check_tier(meta.target_tier)
    return tomli_w.dumps({"metadata": meta.model_dump(), **preset_settings(cfg)})


def to_code(preset_toml: str) -> str:
    """A one-line text code for chats and forums: prefix + base64url(zlib(TOML))."""
    packed = zlib.compress(preset_toml.encode("utf-8"), 9)
    return CODE_PREFIX + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def from_code(code: str) -> str:
    body = "".join(code.split())[len(CODE_PREFIX):]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_PRESET_BYTES + 1)
        if len(raw) > MAX_PRESET_BYTES or inflater.unconsumed_tail:
            raise PresetError(f"preset code expands beyond {MAX_PRESET_BYTES // 1024} KiB; not a preset",
                              "preset_code_too_big", kib=MAX_PRESET_BYTES // 1024)
        return raw.decode("utf-8")
    except (ValueError, zlib.error, UnicodeDecodeError) as err:
        if isinstance(err, PresetError):
            raise
        raise PresetError("not a valid preset code (it may be cut off: copy the whole line)",
                          "preset_bad_code") from None


def read_preset_file(path: str | Path) -> str:
    """A preset file's text: UTF-8 (a BOM allowed) or UTF-16 with its BOM; read only up to the
    size limit, so a huge file is refused without being read whole."""
    from engine.fileio import decode_user_text

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PRESET_BYTES + 1)
    except FileNotFoundError:
        raise PresetError(f"preset file not found: {path}", "preset_file_missing", path=path) from None
    except OSError as err:  # a folder, no permission, ...
        raise PresetError(f"cannot read the preset file {path}: {err.strerror or err}", "preset_file_unreadable",
                          path=path, error=err.strerror or err) from None
    if len(data) > MAX_PRESET_BYTES:
        raise PresetError(f"preset is larger than {MAX_PRESET_BYTES // 1024} KiB; not a preset", "preset_too_big",
                          kib=MAX_PRESET_BYTES // 1024)
    text = decode_user_text(data)
    if text is None:
        raise PresetError(f"{Path(path).name} is not UTF-8 or UTF-16 text; save the preset as UTF-8",
                          "preset_not_text", name=Path(path).name)
    return text


def _check_tier(tier: str) -> None:
    if tier != "any" and tier not in list_tiers():
        tiers = ", ".join(["any", *list_tiers()])
        raise PresetError(f"metadata.target_tier: unknown tier {tier!r} (one of {tiers})", "preset_tier", tier=tier,
                          tiers=tiers)


def _migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    while version < PRESET_SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise PresetError(f"metadata.schema_version {version} cannot be read by this build",
                              "preset_version_unknown", version=version)
        data = MIGRATIONS[version](data)
        version += 1
        data["metadata"]["schema_version"] = version
    return data


def parse_preset(text: str) -> tuple[PresetMetadata, dict[str, Any]]:
    """(metadata, settings) from preset TOML or a text code; every problem is a PresetError that
    names the field."""
    text = text.strip()
    if text.startswith(CODE_PREFIX):
        text = from_code(text)
    if len(text.encode("utf-8")) > MAX_PRESET_BYTES:
        raise PresetError(f"preset is larger than {MAX_PRESET_BYTES // 1024} KiB; not a preset", "preset_too_big",
                          kib=MAX_PRESET_BYTES // 1024)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PresetError(f"not valid TOML: {err}", "preset_toml", error=err) from None
    except RecursionError:  # the parser recurses: a = [[[[...]]]] a thousand deep
        raise PresetError("arrays or tables nested too deeply to be a preset", "preset_too_deep") from None
    meta_raw = data.get("metadata")
    if not isinstance(meta_raw, dict):
        raise PresetError("a preset needs a [metadata] table (name, schema_version, ...)", "preset_no_metadata")
    version = meta_raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PresetError(f"metadata.schema_version: must be an integer (got {version!r})", "preset_version_type",
                          value=repr(version))
    if version > PRESET_SCHEMA_VERSION:
        raise PresetError(f"metadata.schema_version {version} is newer than this build reads "
                          f"({PRESET_SCHEMA_VERSION}); update LoRA Forge", "preset_version_newer", version=version,
                          supported=PRESET_SCHEMA_VERSION)
    if version < 1:
        raise PresetError(f"metadata.schema_version {version} is not a valid version (versions start at 1)",
                          "preset_version_invalid", version=version)
    data = _migrate(data, version)
    try:
        meta = PresetMetadata.model_validate(data.pop("metadata"))
    except ValidationError as err:
        problems = [{**p, "loc": f"metadata.{p['loc']}"} for p in validation_problems(err)]
        raise PresetError("; ".join(f"{p['loc']}: {p['msg']}" for p in problems), "preset_metadata",
                          problems) from None
    _check_tier(meta.target_tier)
    for section, key in sorted(LOCAL_FIELDS):
        if key in data.get(section, {}):
            raise PresetError(f"{section}.{key}: a preset carries no local paths; remove it", "preset_local_path",
                              field=f"{section}.{key}")
    for section, key in sorted(PERSONAL_FIELDS):
        if key in data.get(section, {}):
            raise PresetError(f"{section}.{key}: a safety setting; a preset cannot turn it on for you",
                              "preset_personal", field=f"{section}.{key}")
    method = data.get("network", {}).get("type", "lora")
    if method != meta.method:
        raise PresetError(f"metadata.method is {meta.method!r} but network.type is {method!r}", "preset_method",
                          method=meta.method, type=method)
    try:
        parse_config(deep_merge(_PLACEHOLDER, data))
    except ConfigError as err:
        raise PresetError(str(err).replace("invalid job config", "invalid preset settings"), "preset_settings",
                          err.problems) from None
    return meta, data


def job_from_preset(text: str, base: str, dataset: str, output_dir: str = "output",
                    name: str | None = None) -> JobConfig:
    """A full job: the preset's settings with this machine's base model, dataset and output."""
    meta, settings = parse_preset(text)
    own = {"model": {"base": base}, "dataset": {"path": dataset},
           "output": {"dir": output_dir, **({"name": name} if name else {})}}
    if "base" in settings.get("model", {}) and not base:
        own["model"].pop("base")
    return parse_config(deep_merge(settings, own))
