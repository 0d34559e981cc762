"""Flux.1's text encoders as separate files, as ComfyUI and Forge keep them.

A Flux user who downloaded ``flux1-dev.safetensors`` usually has ``clip_l.safetensors`` and
``t5xxl_fp16.safetensors`` (or ``t5xxl_fp8_e4m3fn[_scaled].safetensors``) in ``models/clip`` (or
``models/text_encoders``) and ``ae.safetensors`` in ``models/vae``, not a diffusers folder. These
files hold the transformers models' own tensor names (``text_model.*`` for CLIP-L; ``encoder.*``
and ``shared.weight`` for T5), sometimes under a checkpoint prefix; their architecture comes from
a config folder (``model.config_dir`` or Flux.1 [dev]'s reference). A file that is not the
encoder it is given as, or lacks tensors, is refused: a text encoder with random layers would
train a LoRA on nonsense without an error.

fp8 files are widened to the training dtype; a "scaled" fp8 file (ComfyUI's ``scaled_fp8``
marker, a ``scale_weight`` per layer) has each weight multiplied by its scale, as ComfyUI does.

T5's tokenizer: no Python package ships its vocabulary, so it comes from ``model.t5_tokenizer``,
else the config folder's ``tokenizer_2``, else a ComfyUI installation the T5 file sits in (its
``comfy/text_encoders/t5_tokenizer``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.models.loader import ModelLoadError

# (marker tensors, the checkpoint prefixes a file may put before the model's own names); CLIP-L
# files say text_model.* (transformers 5 saves without it and reads both)
CLIP_MARKERS = ("text_model.encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.self_attn.q_proj.weight")
T5_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight",)
CLIP_PREFIXES = ("", "text_encoders.clip_l.transformer.", "cond_stage_model.transformer.", "transformer.")
T5_PREFIXES = ("", "text_encoders.t5xxl.transformer.", "transformer.")
# tensors a file may carry that the encoder has no use for (CLIP-L saved with SD3's projection)
IGNORED = {"text_projection.weight", "logit_scale", "text_model.embeddings.position_ids"}
# where a ComfyUI installation keeps T5's tokenizer, relative to its root
COMFYUI_T5_TOKENIZER = Path("comfy") / "text_encoders" / "t5_tokenizer"


@dataclass(frozen=True)
class FluxFiles:
    """model.clip_l, model.t5xxl, model.t5_tokenizer (the VAE is model.vae, as for every family)."""
    clip_l: Path | None = None
    t5xxl: Path | None = None
    t5_tokenizer: Path | None = None

    @classmethod
    def of(cls, model_cfg: Any) -> FluxFiles:
        def path(name: str) -> Path | None:
            value = getattr(model_cfg, name, None)
            return Path(value).expanduser() if value else None
        return cls(path("clip_l"), path("t5xxl"), path("t5_tokenizer"))

    @property
    def any(self) -> bool:
        return bool(self.clip_l or self.t5xxl or self.t5_tokenizer)


def encoder_state(path: Path, markers: tuple[str, ...], prefixes: tuple[str, ...], what: str
                  ) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's own names, fp8 widened (and scaled where the file
    says so). Raises when the file is not ``what`` (its marker tensor is missing)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelLoadError(f"{what} file not found: {path}", "flux_encoder_missing", what=what, path=path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path.name}: give {what} as a .safetensors file", "flux_encoder_format",
                             name=path.name, what=what)
    with safe_open(str(path), "pt") as fh:
        keys = list(fh.keys())
        found = set(keys)
        prefix = next((p for p in prefixes for m in markers if p + m in found), None)
        if prefix is None:
            raise ModelLoadError(f"{path.name} is not {what} (it has no {markers[0]})", "flux_encoder_kind",
                                 name=path.name, what=what, marker=markers[0])
        raw = {k[len(prefix):]: fh.get_tensor(k) for k in keys if k.startswith(prefix)}
    return {k: v for k, v in dequantized(raw).items() if k not in IGNORED}


FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_scaled_fp8(keys: Any) -> bool:
    """ComfyUI's "scaled" fp8 layout: a ``scaled_fp8`` marker and a ``scale_weight`` per layer."""
    return any(k == "scaled_fp8" or k.endswith((".scaled_fp8", ".scale_weight")) for k in keys)


def dequantized(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp8 tensors widened to fp32, each weight of a scaled fp8 file times its ``scale_weight``
    (as ComfyUI computes it); the scales and markers themselves dropped."""
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.endswith(("scaled_fp8", ".scale_weight", ".scale_input")):
            continue
        scale = raw.get(key[: -len(".weight")] + ".scale_weight") if key.endswith(".weight") else None
        if value.dtype in FP8 or scale is not None:
            value = value.to(torch.float32) * (scale.to(torch.float32) if scale is not None else 1.0)
        state[key] = value
    return state


def _load(cls: Any, config: Any, state: dict[str, torch.Tensor], path: Path, what: str, dtype: torch.dtype,
          may_miss: set[str]) -> Any:
    model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    missing = set(info["missing_keys"]) - may_miss
    if missing or info["mismatched_keys"]:
        bad = sorted(missing) or [str(k) for k in info["mismatched_keys"]]
        raise ModelLoadError(f"{path.name} does not hold Flux's {what} (tensors missing or of another size, "
                     f"e.g. {bad[0]})", "flux_encoder_incomplete", name=path.name, what=what, example=bad[0])
    return model.eval()


def load_clip_l(path: Path, config_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    state = encoder_state(path, CLIP_MARKERS, CLIP_PREFIXES, "CLIP-L (clip_l.safetensors)")
    config = CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder")
    return _load(CLIPTextModel, config, state, path, "CLIP-L", dtype, set())


def load_t5(path: Path, config_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import T5Config, T5EncoderModel

    state = encoder_state(path, T5_MARKERS, T5_PREFIXES, "T5-XXL (t5xxl_fp16.safetensors)")
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]  # (one tied matrix, either name)
    config = T5Config.from_pretrained(config_dir, subfolder="text_encoder_2")
    return _load(T5EncoderModel, config, state, path, "T5-XXL", dtype, {"encoder.embed_tokens.weight"})


def t5_tokenizer_dir(files: FluxFiles, config_dir: Path | None) -> Path | None:
    """Where T5's tokenizer is: model.t5_tokenizer, the config folder's tokenizer_2, or the ComfyUI
    installation the T5 file sits in; None when none has one."""
    if files.t5_tokenizer is not None:
        return files.t5_tokenizer.parent if files.t5_tokenizer.is_file() else files.t5_tokenizer
    if config_dir is not None and (config_dir / "tokenizer_2").is_dir():
        return config_dir / "tokenizer_2"
    if files.t5xxl is not None:
        for root in list(files.t5xxl.resolve().parents)[:5]:
            if (root / COMFYUI_T5_TOKENIZER / "tokenizer.json").is_file():
                return root / COMFYUI_T5_TOKENIZER
    return None


# where ComfyUI (models/clip, models/text_encoders, models/vae) and Forge (models/text_encoder,
# models/VAE) keep these files, beside the transformer's models/unet, models/diffusion_models or
# models/Stable-diffusion
ENCODER_DIRS = ("clip", "text_encoders", "text_encoder")
VAE_DIRS = ("vae", "VAE")
# of several T5 files, the closest to the original weights first
T5_PREFERENCE = ("fp16", "bf16", "fp32", "fp8")


def find_beside(transformer_file: Path) -> dict[str, Path]:
    """The CLIP-L, T5-XXL and VAE files of the models folder a Flux transformer file is in, by
    the names they are downloaded as ({"clip_l", "t5xxl", "vae"}: what was found)."""
    models = Path(transformer_file).expanduser().resolve().parent.parent
    found: dict[str, Path] = {}

    def files(dirs: tuple[str, ...], pattern: str) -> list[Path]:
        return sorted(p for d in dirs if (models / d).is_dir() for p in (models / d).glob(pattern) if p.is_file())

    clip = files(ENCODER_DIRS, "clip_l*.safetensors")
    if clip:
        found["clip_l"] = clip[0]
    t5 = files(ENCODER_DIRS, "t5xxl*.safetensors")
    if t5:
        def rank(p: Path) -> tuple[int, str]:
            return next((i for i, tag in enumerate(T5_PREFERENCE) if tag in p.name.lower()), len(T5_PREFERENCE)), p.name
        found["t5xxl"] = min(t5, key=rank)
    vae = [p for p in files(VAE_DIRS, "*.safetensors") if p.name.lower() in ("ae.safetensors", "flux_vae.safetensors")
           or p.name.lower().startswith(("flux1-ae", "flux-ae", "flux_ae"))]
    if vae:
        found["vae"] = vae[0]
    return found
