"""kohya-style sample prompt lines and A1111 ``parameters`` PNG text.

A line is ``prompt --n negative --w 512 --h 512 --d seed --s steps --l cfg`` (every flag
optional), the syntax kohya users already keep in their prompt files. Images carry the same
``parameters`` text A1111 writes, so "PNG Info" and Civitai read them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.config.sample_limits import SAMPLE_LIMITS
from engine.fileio import atomic_write
from engine.generate.sampler import SampleSpec
from engine.i18n import Explained

_FLAG = re.compile(r"\s--([a-z])\s+")
SAMPLER_LABELS = {"euler_a": "Euler a", "euler": "Euler", "ddim": "DDIM"}


class PromptLineError(Explained, ValueError):
    pass


def parse_prompt_line(line: str, defaults: SampleSpec) -> SampleSpec:
    """Parse one kohya prompt line; flags not given keep ``defaults``."""
    parts = _FLAG.split(" " + line.strip())
    prompt = parts[0].strip()
    if not prompt:
        raise PromptLineError(f"sample prompt line has no prompt: {line!r}", "prompt_empty", line=line)
    spec = SampleSpec(**vars(defaults))
    spec.prompt = prompt
    converters = {"n": ("negative", str), "w": ("width", int), "h": ("height", int),
                  "d": ("seed", int), "s": ("steps", int), "l": ("cfg_scale", float)}
    for flag, value in zip(parts[1::2], parts[2::2]):
        if flag not in converters:
            raise PromptLineError(f"unknown flag --{flag} in sample prompt line {line!r} "
                                  "(known: --n --w --h --d --s --l)", "prompt_flag", flag=flag, line=line)
        field, conv = converters[flag]
        try:
            setattr(spec, field, conv(value.strip()))
        except ValueError:
            raise PromptLineError(f"--{flag} needs a number in {line!r} (got {value.strip()!r})", "prompt_number",
                                  flag=flag, line=line, value=value.strip()) from None
    if spec.width % 8 or spec.height % 8:
        raise PromptLineError(f"--w/--h must be multiples of 8 in {line!r}", "prompt_size", line=line)
    flags = {"width": "w", "height": "h", "seed": "d", "steps": "s", "cfg_scale": "l"}
    for name, (low, high) in SAMPLE_LIMITS.items():
        value = getattr(spec, name)
        if not (math.isfinite(value) and low <= value <= high):
            raise PromptLineError(f"--{flags[name]} must be between {low} and {high} in {line!r} "
                                  f"(got {value})", "prompt_range", flag=flags[name], low=low,
                                  high=high, line=line, value=value)
    return spec


def a1111_parameters(spec: SampleSpec, sampler: str, model_name: str = "", model_hash: str = "",
                     lora_hashes: dict[str, str] | None = None) -> str:
    """The text A1111 stores under the PNG key ``parameters``."""
    lines = [spec.prompt]
    if spec.negative:
        lines.append(f"Negative prompt: {spec.negative}")
    fields = [f"Steps: {spec.steps}", f"Sampler: {SAMPLER_LABELS.get(sampler, sampler)}",
              f"CFG scale: {spec.cfg_scale:g}", f"Seed: {spec.seed}", f"Size: {spec.width}x{spec.height}"]
    if model_hash:
        fields.append(f"Model hash: {model_hash[:10]}")
    if model_name:
        fields.append(f"Model: {model_name}")
    if lora_hashes:
        fields.append('Lora hashes: "' + ", ".join(f"{k}: {v[:12]}" for k, v in lora_hashes.items()) + '"')
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png_with_parameters(image: Image.Image, path: Path, parameters: str) -> Path:
    info = PngInfo()
    info.add_text("parameters", parameters)
    return atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
