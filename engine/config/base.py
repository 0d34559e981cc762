"""What every job section shares: strict fields, path markers, the config error. Torch-free and
free of method imports, so method modules can define their own [network] schema on it."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A job config that cannot be used; the message names the offending field(s). ``problems``
    keeps pydantic's structured errors (field, type, limits, input) so a UI can say the same
    thing in another language."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None,
                 key: str | None = None, **params: Any):
        super().__init__(message)
        self.problems = problems or []
        self.key, self.params = key, params  # as engine.i18n.Explained: said in the page's language


class Section(BaseModel):
    # allow_inf_nan=False: an inf alpha or a NaN cfg scale is refused here, not found hours later
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def path_field(kind: Literal["model", "file", "folder"], **kwargs: Any) -> Any:
    """A field that names a place on disk (``model``: a file, folder or hub id). Marked so the
    web app can check every path of a job (engine.config.base.path_values) without listing them."""
    return Field(json_schema_extra={"path": kind}, **kwargs)


def path_values(cfg: BaseModel) -> list[tuple[str, str]]:
    """(kind, value) of every set path field of ``cfg`` and its sections."""
    out: list[tuple[str, str]] = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            out += path_values(value)
        elif isinstance(info.json_schema_extra, dict) and "path" in info.json_schema_extra and value:
            out.append((str(info.json_schema_extra["path"]), str(value)))
    return out
