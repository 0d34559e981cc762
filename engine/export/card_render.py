"""Model card files from CardFacts: README.md (Civitai-style, Hugging Face front matter),
card.json (Civitai's field names), card.html (a preview; every user string escaped) and the
A1111 sidecar ``<name>.json``.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from engine.export.card_facts import CardFacts
from engine.i18n import EN, Translator
from engine.methods import usage_of

CommercialUse = Literal["None", "Image", "RentCivit", "Rent", "Sell"]


class CardInfo(BaseModel):
    """What only the author can say (license, description); everything else comes from facts."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    author: str = ""
    license: str = Field("creativeml-openrail-m", description="Hugging Face license id")
    allow_no_credit: bool = True
    allow_commercial_use: list[CommercialUse] = Field(default_factory=lambda: ["Image", "RentCivit",
                                                                              "Rent", "Sell"])
    allow_derivatives: bool = True
    allow_different_license: bool = True
    nsfw: bool = False
    tags: list[str] = Field(default_factory=list)
    negative_text: str = ""
    notes: str = ""
    top_tags: int = Field(10, ge=0, le=1000)


@dataclass(frozen=True)
class CardBleed:
    """How much the file changes a prompt without its trigger (0 = not at all, 100 = every pixel
    to its opposite), at ``weight``, over ``seeds`` images."""
    prompt: str
    value: float
    weight: float
    seeds: int


@dataclass
class CardSample:
    path: Path  # relative to the card folder
    prompt: str  # as A1111 would show it, network tag included
    negative: str
    seed: int
    steps: int
    sampler: str
    cfg_scale: float
    width: int
    height: int


def usage_tag(facts: CardFacts) -> str:
    """What to type in A1111 to use the file at the preferred weight."""
    w = f"{facts.preferred_weight:g}"
    usage = usage_of(facts.kind)
    if usage == "network":
        return f"<lora:{facts.file.stem}:{w}>"
    if usage == "hypernetwork":
        return f"<hypernet:{facts.file.stem}:{w}>"
    if usage == "embedding":
        word = facts.trigger_words[0]
        return word if w == "1" else f"({word}:{w})"
    return ""


def sidecar(facts: CardFacts, info: CardInfo) -> dict[str, Any]:
    """A1111's ``<name>.json`` beside the model (its user-metadata editor's keys)."""
    return {"description": info.description, "sd version": facts.sd_version,
            "activation text": ", ".join(facts.trigger_words),
            "preferred weight": facts.preferred_weight, "negative text": info.negative_text,
            "notes": info.notes}


def card_json(facts: CardFacts, info: CardInfo, samples: list[CardSample],
              bleed: Sequence[CardBleed] = ()) -> dict[str, Any]:
    """Civitai's model + model-version fields (what its API returns and its uploader asks for)."""
    images = [{"url": s.path.as_posix(), "width": s.width, "height": s.height, "nsfw": "None",
               "meta": {"prompt": s.prompt, "negativePrompt": s.negative, "seed": s.seed,
                        "steps": s.steps, "sampler": s.sampler, "cfgScale": s.cfg_scale,
                        "Size": f"{s.width}x{s.height}"}} for s in samples]
    lora_type = facts.params.get("loraType")
    version = {
        "name": f"epoch {facts.epochs}" if facts.epochs else "v1",
        "baseModel": facts.base_model, "baseModelType": "Standard",
        "trainedWords": facts.trigger_words, "epochs": facts.epochs, "steps": facts.steps,
        "clipSkip": facts.params.get("clipSkip"),
        "settings": {"strength": facts.preferred_weight},
        "trainingDetails": {"params": facts.params},
        "files": [{"name": facts.file.name, "sizeKB": facts.size_kb, "type": "Model", "primary": True,
                   "metadata": {"format": "SafeTensor" if facts.file.suffix == ".safetensors"
                                else "PickleTensor", "fp": facts.precision,
                                **({"size": "pruned"} if usage_of(facts.kind) == "checkpoint" else {})},
                   "hashes": facts.hashes}],
        "images": images,
    }
    return {
        "name": facts.name, "description": info.description, "type": facts.civitai_type,
        "nsfw": info.nsfw, "tags": info.tags, "creator": {"username": info.author},
        "allowNoCredit": info.allow_no_credit, "allowCommercialUse": info.allow_commercial_use,
        "allowDerivatives": info.allow_derivatives, "allowDifferentLicense": info.allow_different_license,
        "modelVersions": [version],
        "loraForge": {"kind": facts.kind, "loraType": lora_type, "datasetImages": facts.num_images,
                      "datasetDirs": facts.dataset_dirs,
                      "tagFrequency": dict(facts.tag_counts[:info.top_tags]),
                      "license": info.license,
                      "bleed": [{"prompt": b.prompt, "value": b.value, "weight": b.weight, "seeds": b.seeds}
                                for b in bleed]},
    }


def _yes(value: bool, t: Translator) -> str:
    return t("card.yes") if value else t("card.no")


def _rows(facts: CardFacts, info: CardInfo, t: Translator) -> list[tuple[str, str]]:
    kind = facts.civitai_type + (f" ({facts.params['loraType']})" if facts.params.get("loraType") else "")
    rows = [(t("card.type"), kind), (t("card.base_model"), facts.base_model),
            (t("card.trigger_words"), ", ".join(facts.trigger_words) or "-"),
            (t("card.weight"), f"{facts.preferred_weight:g}"),
            (t("card.epochs"), str(facts.epochs or "-")), (t("card.steps"), str(facts.steps or "-"))]
    if facts.dataset_dirs:
        repeats = ", ".join(f"{k}: {v.get('img_count', 0)} x {v.get('n_repeats', 1)}"
                            for k, v in facts.dataset_dirs.items())
        rows.append((t("card.dataset"), t("card.dataset_value", n=facts.num_images, repeats=repeats)))
    if facts.base_model_name:
        rows.append((t("card.trained_on"), facts.base_model_name))
    if facts.vae_name:
        rows.append((t("card.vae"), facts.vae_name))
    if info.author:
        rows.append((t("card.author"), info.author))
    return rows


def _license_rows(info: CardInfo, t: Translator) -> list[tuple[str, str]]:
    return [(t("card.license"), info.license), (t("card.no_credit"), _yes(info.allow_no_credit, t)),
            (t("card.commercial"), ", ".join(info.allow_commercial_use) or t("card.none")),
            (t("card.merges"), _yes(info.allow_derivatives, t)),
            (t("card.merge_license"), _yes(info.allow_different_license, t))]


def _md_text(text: str) -> str:
    """User text shown literally: Markdown renderers pass raw HTML through."""
    return html.escape(str(text), quote=False)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span that shows it exactly: the fence is one backtick longer
    than any run inside, so a backtick in a trigger word cannot close the span and turn what
    follows (``<script>``...) into live HTML."""
    text = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain(text: str) -> str:
    return str(text)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _yaml(value: Any) -> str:
    """A front-matter value as JSON (valid YAML) with ``<``, ``>`` and ``&`` as \\u escapes: the
    same value for a YAML reader, and no HTML for a renderer that shows front matter as text."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _md_table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def readme(facts: CardFacts, info: CardInfo, samples: list[CardSample], t: Translator = EN,
           bleed: Sequence[CardBleed] = ()) -> str:
    """Civitai-style card; the front matter makes it a Hugging Face model card too."""
    tags = ["stable-diffusion", "text-to-image", facts.kind.replace("_", "-"), *info.tags]
    front = ["---", f"license: {_yaml(info.license)}", f"tags: {_yaml(tags)}"]
    if facts.trigger_words:
        front.append(f"instance_prompt: {_yaml(', '.join(facts.trigger_words))}")
    front.append("---")
    out = [*front, "", f"# {_md_text(facts.name)}", ""]
    if info.description:
        out += [_md_text(info.description), ""]
    out += [_md_table(_rows(facts, info, t)), ""]
    if samples:
        out += [f"## {t('card.samples')}", ""]
        for s in samples:
            line = t("card.sample_line", seed=s.seed, steps=s.steps, cfg=f"{s.cfg_scale:g}")
            alt = re.sub(r"([\[\]\\])", r"\\\1", _md_cell(s.prompt))
            out += [f"![{alt}]({s.path.as_posix()})", "", f"{md_code(s.prompt)} ({line})", ""]
    if bleed:
        out += [f"## {t('card.bleed')}", "", t("card.bleed_about"), "",
                *[f"- {line}" for line in bleed_lines(bleed, t, md_code)], ""]
    out += [f"## {t('card.how_to_use')}", "", *usage_lines(facts, t, md_code), ""]
    if facts.params:
        out += [f"## {t('card.training_parameters')}", "",
                _md_table(sorted(facts.params.items()), (t("card.parameter"), t("card.value"))), ""]
    if facts.tag_counts and info.top_tags:
        out += [f"## {t('card.top_tags', n=info.top_tags)}", "",
                _md_table(facts.tag_counts[:info.top_tags], (t("card.tag"), t("card.images"))), ""]
    out += [f"## {t('card.hashes')}", "", _md_table(list(facts.hashes.items()), (t("card.hash"), t("card.value"))), ""]
    out += [f"## {t('card.license_title')}", "", _md_table(_license_rows(info, t)), ""]
    if info.notes:
        out += [f"## {t('card.notes')}", "", _md_text(info.notes), ""]
    return "\n".join(out)


def bleed_lines(bleed: Sequence[CardBleed], t: Translator = EN, code=_plain) -> list[str]:
    return [t("card.bleed_line", prompt=code(b.prompt), value=f"{b.value:g}", weight=f"{b.weight:g}", seeds=b.seeds)
            for b in bleed]


def usage_lines(facts: CardFacts, t: Translator = EN, code=_plain) -> list[str]:
    """How to use the file in each program, one line each; ``code`` formats what is typed
    (names, tags, Python calls): md_code for Markdown, as is for HTML (escaped there)."""
    tag, f, words = usage_tag(facts), facts.file.name, ", ".join(facts.trigger_words)
    weight = f"{facts.preferred_weight:g}"
    usage = usage_of(facts.kind)
    if usage == "network":
        return [t("card.use_lora_a1111", file=code(f), tag=code(tag),
                  words=t("card.use_with_words", words=code(words)) if words else ""),
                t("card.use_lora_comfy", weight=weight),
                t("card.use_lora_diffusers", load=code(f"pipe.load_lora_weights({json.dumps(f)})"),
                  call=code(f'pipe(prompt, cross_attention_kwargs={{"scale": {weight}}})'))]
    if usage == "embedding":
        load = f"pipe.load_textual_inversion({json.dumps(f)}, token={json.dumps(words, ensure_ascii=False)})"
        return [t("card.use_ti", file=code(f), tag=code(tag)), t("card.use_ti_diffusers", load=code(load))]
    if usage == "hypernetwork":
        return [t("card.use_hypernetwork", file=code(f), tag=code(tag))]
    if usage == "aesthetic":
        return [t("card.use_aesthetic")]
    return [t("card.use_checkpoint", file=code(f))]


def _html_table(rows: list[tuple[str, Any]], head: tuple[str, str] | None = None) -> str:
    e = html.escape
    th = f"<tr><th>{e(head[0])}</th><th>{e(head[1])}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{th}{body}</table>"


def card_html(facts: CardFacts, info: CardInfo, samples: list[CardSample], t: Translator = EN,
              bleed: Sequence[CardBleed] = ()) -> str:
    """A self-contained preview page (images by relative path); nothing unescaped from users."""
    e = html.escape
    parts = [f"<h1>{e(facts.name)}</h1>"]
    if info.description:
        parts.append(f"<p class='description'>{e(info.description)}</p>")
    parts.append(_html_table(_rows(facts, info, t)))
    if samples:
        figs = "".join(f"<figure><img src='{e(s.path.as_posix(), quote=True)}' alt='{e(s.prompt, quote=True)}'>"
                       f"<figcaption>{e(s.prompt)} "
                       f"({e(t('card.sample_line', seed=s.seed, steps=s.steps, cfg=f'{s.cfg_scale:g}'))})"
                       "</figcaption></figure>" for s in samples)
        parts.append(f"<h2>{e(t('card.samples'))}</h2><div class='samples'>{figs}</div>")
    if bleed:
        parts.append(f"<h2>{e(t('card.bleed'))}</h2><p>{e(t('card.bleed_about'))}</p><ul>"
                     + "".join(f"<li>{e(line)}</li>" for line in bleed_lines(bleed, t)) + "</ul>")
    parts.append(f"<h2>{e(t('card.how_to_use'))}</h2><ul>"
                 + "".join(f"<li>{e(line[2:])}</li>" for line in usage_lines(facts, t)) + "</ul>")
    if facts.params:
        parts.append(f"<h2>{e(t('card.training_parameters'))}</h2>" + _html_table(
            sorted(facts.params.items()), (t("card.parameter"), t("card.value"))))
    if facts.tag_counts and info.top_tags:
        parts.append(f"<h2>{e(t('card.top_tags_short'))}</h2>" + _html_table(
            facts.tag_counts[:info.top_tags], (t("card.tag"), t("card.images"))))
    parts.append(f"<h2>{e(t('card.hashes'))}</h2>" + _html_table(list(facts.hashes.items()),
                                                                 (t("card.hash"), t("card.value"))))
    parts.append(f"<h2>{e(t('card.license_title'))}</h2>" + _html_table(_license_rows(info, t)))
    if info.notes:
        parts.append(f"<h2>{e(t('card.notes'))}</h2><p>{e(info.notes)}</p>")
    style = ("body{font-family:sans-serif;max-width:860px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             ".samples{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}img{max-width:256px}")
    lang = "zh-CN" if t.lang == "zh" else t.lang
    return (f"<!DOCTYPE html>\n<html lang='{lang}'><head><meta charset='utf-8'><title>{e(facts.name)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
