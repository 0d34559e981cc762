"""The product's words, one catalogue per language (engine/locales/<lang>.toml: the web app and
the model card), and the language to show: ``--lang`` if given, else the browser's (its
Accept-Language header), else English.

Keys are the catalogue's dotted paths (``[base] title = ...`` -> ``base.title``); values are
``str.format`` templates. Both catalogues must have the same keys (a test checks it), so a
missing translation is a failing test, not an English word in a Chinese page.
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

LOCALES = Path(__file__).resolve().parent / "locales"
LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT_LANGUAGE = "en"


def _flatten(table: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = str(value)
    return out


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return _flatten(tomllib.loads((LOCALES / f"{lang}.toml").read_text(encoding="utf-8")))


class Translator:
    """``t("train.started")`` -> the text in this language; ``t("x", n=3)`` fills ``{n}``."""

    def __init__(self, lang: str = DEFAULT_LANGUAGE):
        self.lang = lang
        self.words = catalogue(lang)

    def __call__(self, key: str, **values) -> str:
        try:
            text = self.words[key]
        except KeyError:
            raise KeyError(f"no text for {key!r} in the {self.lang} catalogue") from None
        return text.format(**values) if values else text


EN = Translator(DEFAULT_LANGUAGE)  # the engine's own language (CLI, logs, default of the web app)


def pick_language(accept_language: str | None, forced: str | None = None) -> str:
    """``forced`` (``--lang``) wins; else the first of the browser's languages we have."""
    if forced:
        return forced
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        base = tag.split("-")[0]
        if base in LANGUAGES:
            return base
    return DEFAULT_LANGUAGE


class Explained(Exception):
    """Base of user-facing errors (mixed with ValueError, RuntimeError, ...): besides the English
    message, a catalogue key (under ``errors.``) and its values, so the web app can say the same
    in the page's language."""

    def __init__(self, message: str, key: str | None = None, problems: list | None = None, **params: Any):
        super().__init__(message)
        self.key, self.params = key, params
        self.problems = problems or []  # engine.config.job's structured field errors, if any

    @classmethod
    def wrapping(cls, err: BaseException):
        """``err`` re-raised as this class, keeping its message, key and values."""
        return cls(str(err), getattr(err, "key", None), getattr(err, "problems", None),
                   **getattr(err, "params", {}))


class UserInputError(Explained, ValueError):
    """A keyed error for a bad setting or file where no more specific class exists."""


def describe_error(err: BaseException, t: Translator) -> str:
    """``err`` in ``t``'s language when it carries a known key, else its own message. Values that
    are errors themselves are described the same way; field problems follow one per line."""
    key, problems = getattr(err, "key", None), getattr(err, "problems", None)
    if not (key and f"errors.{key}" in t.words):
        return describe_problems(problems, t) if problems else str(err)
    params: dict[str, Any] = getattr(err, "params", {})
    values = {k: describe_error(v, t) if isinstance(v, BaseException) else str(v) for k, v in params.items()}
    text = t(f"errors.{key}", **values)
    return text + "\n" + describe_problems(problems, t) if problems else text


# pydantic error types a UI can say in its own language (errors.<type>); the others keep
# pydantic's English words
CONFIG_ERROR_TYPES = ("missing", "extra_forbidden", "greater_than_equal", "less_than_equal",
                      "greater_than", "less_than", "multiple_of", "int_parsing", "int_from_float",
                      "float_parsing", "bool_parsing", "string_type", "literal_error",
                      "string_too_short", "string_too_long", "string_pattern_mismatch")


def describe_problems(problems: list[dict[str, Any]], t=None) -> str:
    """One line per field: ``loc: what is wrong (got value)``. Without ``t`` in the engine's
    English (pydantic's words); with an engine.i18n.Translator in its language."""
    lines = []
    for p in problems:
        msg = p["msg"]
        if t and p.get("cause") is not None:
            msg = describe_error(p["cause"], t)
        elif t and p["type"] in CONFIG_ERROR_TYPES:
            msg = t(f"errors.{p['type']}", **p["ctx"])
        got = p["input"]
        if p["type"] != "missing" and not isinstance(got, dict):
            shown = repr(got) if len(repr(got)) <= 200 else repr(got)[:200] + "..."
            msg += t("errors.got", value=shown) if t else f" (got {shown})"
        lines.append(f"{p['loc']}: {msg}" if p["loc"] else msg)
    head = t("errors.invalid_job") if t else "invalid job config:"
    return head + "\n  " + "\n  ".join(lines)
