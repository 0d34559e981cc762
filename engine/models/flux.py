"""Flux.1: a rectified-flow transformer on packed 16-channel latents, conditioned on T5 and CLIP.

The training loop is written for a UNet called as ``unet(latents, timesteps, hidden,
added_cond_kwargs=...)``. :class:`FluxDenoiser` gives Flux's transformer that call: it packs the
latents into 2x2 patches (the 64-wide tokens the transformer reads), builds the position ids,
adds the fixed guidance value a guidance-distilled model ([dev]) is conditioned on, and unpacks
the prediction. Everything the loop does with a UNet (accelerate, gradient checkpointing, the
loss on [B, C, H, W]) then works unchanged; LoRA layers go into ``denoiser.transformer``.

Packing and ids follow the reference implementation (and diffusers' FluxPipeline): tokens in
row-major order, channels ordered (channel, row in patch, column in patch), image ids
(0, row, column), text ids all zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn

# T5 tokens: Flux.1 [dev] was trained with 512, [schnell] with 256
T5_TOKENS = 512
# the repeated blocks, which hold nearly all weights: what training.quantize_base quantizes
TRANSFORMER_BLOCKS = ("transformer_blocks", "single_transformer_blocks")
T5_BLOCKS = ("encoder.block",)
# T5 quantizes to int8 only: its feed-forward casts its input to the output layer's dtype unless
# that is int8, so a 4-bit (uint8-stored) layer there breaks it; int8 is near-lossless for T5
T5_QUANT: Final = "int8"


def quantize_frozen(model: Any, kind: Any, dtype: torch.dtype, device: torch.device,
                    park: torch.device | None = None) -> Any:
    """training.quantize_base on a loaded Flux (engine.models.loader.LoadedModel): the
    transformer's blocks in ``kind`` (quantized on ``device``, left on ``park``), T5's in int8
    (left where T5 is). Returns what the transformer's blocks held before and hold now."""
    from engine.models.quantize import quantize_blocks

    done = quantize_blocks(model.unet.transformer, TRANSFORMER_BLOCKS, kind, dtype, device, park=park)
    t5 = model.text_encoders[1]
    quantize_blocks(t5, T5_BLOCKS, T5_QUANT, dtype, device, park=next(t5.parameters()).device)
    return done


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of ``height`` x ``width``."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[(H/2)(W/2), 3]: (0, row, column) of each packed token."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def sequence_length(height: int, width: int) -> int:
    """Packed image tokens of latents ``height`` x ``width`` (what the resolution shift reads)."""
    return (height // 2) * (width // 2)


@dataclass
class DenoiserOutput:
    sample: torch.Tensor


class FluxDenoiser(nn.Module):
    """Flux's transformer behind the UNet call the loop makes. ``timestep`` is the flow-matching
    sigma in [0, 1] (the transformer scales it by 1000 itself, as it does the guidance).
    ``guidance``: what a guidance-distilled model ([dev]) is conditioned on; training sets the
    job's ``training.flux_guidance`` (whose default it starts from)."""

    transformer: Any  # diffusers' FluxTransformer2DModel

    def __init__(self, transformer: nn.Module, guidance: float | None = None) -> None:
        from engine.config.job import TrainingConfig

        super().__init__()
        self.transformer = transformer
        self.guidance = TrainingConfig.model_fields["flux_guidance"].default if guidance is None else guidance

    @property
    def config(self) -> Any:
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def enable_xformers_memory_efficient_attention(self) -> None:
        self.transformer.enable_xformers_memory_efficient_attention()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict | None = None, **_: Any) -> DenoiserOutput:
        b, h, w = sample.shape[0], sample.shape[2], sample.shape[3]
        pooled = (added_cond_kwargs or {})["pooled_projections"]
        dtype = sample.dtype
        guidance = (torch.full((b,), self.guidance, device=sample.device, dtype=torch.float32)
                    if self.guidance_embeds else None)
        out = self.transformer(
            hidden_states=pack(sample), encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled,
            timestep=timestep.to(dtype), img_ids=image_ids(h, w, sample.device, dtype),
            txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=sample.device, dtype=dtype),
            guidance=guidance, return_dict=False)[0]
        return DenoiserOutput(unpack(out, h, w))


def t5_tokens(tokenizer: Any) -> int:
    """How many T5 tokens a prompt is padded to: 512 ([dev]), fewer when the tokenizer's own
    limit is lower (the tiny test models)."""
    limit = getattr(tokenizer, "model_max_length", T5_TOKENS) or T5_TOKENS
    return min(T5_TOKENS, int(limit))


def encode_flux_prompts(tokenizers: list, text_encoders: list, prompts: list[str]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5's last hidden states [B, tokens, d], CLIP-L's pooled output [B, 768]), as Flux reads
    them: CLIP truncated at 77 tokens, T5 padded to :func:`t5_tokens` without an attention mask."""
    clip_tok, t5_tok = tokenizers
    clip, t5 = text_encoders
    ids = clip_tok(prompts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(clip.device)
    pooled = clip(ids, output_hidden_states=False).pooler_output
    n = t5_tokens(t5_tok)
    t5_ids = t5_tok(prompts, padding="max_length", max_length=n, truncation=True,
                    return_tensors="pt").input_ids.to(t5.device)
    hidden = t5(t5_ids, output_hidden_states=False)[0]
    return hidden, pooled


def is_flux_folder(index: dict, path) -> bool:
    """A diffusers Flux folder: FluxPipeline's model_index.json, or a transformer of Flux's class."""
    import json
    from pathlib import Path

    if str(index.get("_class_name", "")).startswith("Flux"):
        return True
    config = Path(path) / "transformer" / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "FluxTransformer2DModel"
    except (OSError, ValueError):
        return False


def _has_weights(folder, part: str) -> bool:
    return folder is not None and any((folder / part).glob("*.safetensors"))


def check_flux_parts(folder, files: Any, vae_given: bool, transformer_given: bool, name: str = ""):
    """Raise ModelLoadError naming every part of Flux the job has no source for (before anything
    large is read); returns where T5's tokenizer is."""
    from engine.models import flux_files
    from engine.models.loader import ModelLoadError

    tokenizer_dir = flux_files.t5_tokenizer_dir(files, folder)
    missing = [label for label, ok in (
        ("transformer/", transformer_given or _has_weights(folder, "transformer")),
        ("the VAE (model.vae = ae.safetensors)", vae_given or _has_weights(folder, "vae")),
        ("CLIP-L (model.clip_l = clip_l.safetensors)", files.clip_l or _has_weights(folder, "text_encoder")),
        ("T5-XXL (model.t5xxl = t5xxl_fp16.safetensors)", files.t5xxl or _has_weights(folder, "text_encoder_2")),
        ("T5's tokenizer (model.t5_tokenizer)", tokenizer_dir is not None)) if not ok]
    if missing and not transformer_given and folder is not None and not files.any:
        raise ModelLoadError(f"{folder} is a Flux folder without {', '.join(missing)}; a Flux model needs its "
                             "transformer, VAE, both text encoders (CLIP-L and T5-XXL), their tokenizers and its "
                             "scheduler", "flux_folder_incomplete", path=folder, parts=", ".join(missing))
    if missing:
        raise ModelLoadError(f"{name or folder}: Flux also needs {'; '.join(missing)}. Give them as ComfyUI keeps "
                             "them (models/clip, models/vae; T5's tokenizer is found in the ComfyUI folder they "
                             "sit in) or set model.config_dir to a diffusers Flux folder that has them",
                             "flux_parts_missing", name=name or folder, parts="; ".join(missing))
    return tokenizer_dir


def load_flux_parts(folder, dtype: torch.dtype, transformer: nn.Module | None = None, files: Any = None,
                    vae_given: bool = False, name: str = "") -> dict[str, Any]:
    """Flux's parts: each from its separate file where the job gives one (``files``:
    engine.models.flux_files.FluxFiles; the transformer from a single file, the VAE through
    model.vae), else from the diffusers folder ``folder`` (safetensors only). Architectures from
    ``folder``'s configs, else Flux.1 [dev]'s reference; CLIP's tokenizer from the folder, else
    built offline; T5's from the folder, model.t5_tokenizer or a ComfyUI installation."""
    from pathlib import Path

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    from engine.models import flux_files
    from engine.models.families import family
    from engine.models.loader import ModelLoadError
    from engine.models.reference import reference_config_dir

    folder = Path(folder) if folder is not None else None
    files = files or flux_files.FluxFiles()
    reference = reference_config_dir(family("flux1").reference)

    def configs(part: str, file: str = "config.json"):
        return folder if folder is not None and (folder / part / file).is_file() else reference

    tokenizer_dir = check_flux_parts(folder, files, vae_given, transformer is not None, name)
    try:
        tokenizer_2 = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(f"the T5 tokenizer in {tokenizer_dir} cannot be read without the internet or "
                             f"sentencepiece ({err}); it needs its tokenizer.json (every diffusers copy of Flux.1 "
                             "has one: download the tokenizer_2 folder again)", "flux_t5_tokenizer",
                             path=tokenizer_dir) from None
    if transformer is None:  # safetensors only: never fall back to pickled .bin weights
        transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype,
                                                             use_safetensors=True)
    parts: dict[str, Any] = {"unet": FluxDenoiser(transformer)}
    if _has_weights(folder, "vae") and not vae_given:
        parts["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, use_safetensors=True)
    parts["text_encoder"] = (flux_files.load_clip_l(files.clip_l, configs("text_encoder"), dtype) if files.clip_l
                             else CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype,
                                                                use_safetensors=True))
    parts["text_encoder_2"] = (flux_files.load_t5(files.t5xxl, configs("text_encoder_2"), dtype) if files.t5xxl
                               else T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", dtype=dtype,
                                                                   use_safetensors=True))
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(configs("tokenizer", "tokenizer_config.json"),
                                                       subfolder="tokenizer")
    parts["tokenizer_2"] = tokenizer_2
    parts["noise_scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(
        configs("scheduler", "scheduler_config.json"), subfolder="scheduler")
    return parts


def is_flux_checkpoint(keys: list[str]) -> bool:
    """The original (BFL) Flux transformer layout, as downloaded (``flux1-dev.safetensors``), with
    or without ComfyUI's ``model.diffusion_model.`` prefix."""
    return any(k.endswith("double_blocks.0.img_attn.qkv.weight") for k in keys) and not any(
        k.startswith(("lora_unet_", "lora_te")) for k in keys)


def load_flux_single_file(path, components, dtype: torch.dtype, files: Any = None,
                          vae_given: bool = False) -> dict[str, Any]:
    """A Flux transformer file in the original layout (diffusers converts it) with the other parts
    from their own files (``files``, model.vae) or a diffusers Flux folder (``model.config_dir``).
    The transformer's architecture comes from that folder's ``transformer/config.json``, else from
    Flux.1 [dev]'s reference."""
    from pathlib import Path

    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from engine.models import flux_files
    from engine.models.families import family
    from engine.models.loader import single_file_keys
    from engine.models.reference import reference_config_dir

    components = Path(components) if components is not None else None
    config = components if components is not None and (components / "transformer" / "config.json").is_file() \
        else reference_config_dir(family("flux1").reference)
    name = Path(path).name
    check_flux_parts(components, files or flux_files.FluxFiles(), vae_given, True, name)
    source: Any = str(path)
    if flux_files.is_scaled_fp8(single_file_keys(Path(path))):  # diffusers would read the fp8 values unscaled
        source = flux_files.dequantized(load_file(str(path)))
    transformer = FluxTransformer2DModel.from_single_file(source, config=str(config), subfolder="transformer",
                                                          torch_dtype=dtype, local_files_only=True)
    return load_flux_parts(components, dtype, transformer=transformer, files=files, vae_given=vae_given, name=name)
