"""Tiny Stable Diffusion models for tests and CPU smoke runs.

They use the real SD architecture classes (so module names, LoRA targets, single-file key layouts and
loaders behave exactly as with full-size weights) but with tiny widths and random, seeded weights, so a
whole pipeline builds in about a second and no download is ever needed. The tokenizer is the real CLIP
BPE tokenizer (see ``clip_tokenizer``), so token ids match production models.

``sample_size`` everywhere is the UNet's latent size (diffusers' meaning); the tiny VAE downsamples 2x,
so images are ``2 * sample_size`` pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# SD 1.x/2.x noise schedule (DDPM, scaled_linear 0.00085 -> 0.012, 1000 steps).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, steps_offset=1)
TEXT_HIDDEN = 32
TEXT2_HIDDEN = 48  # tiny SDXL's second encoder
VAE_SCALE = 2  # tiny VAE has two blocks -> one downsample


def _text_config(hidden_act: str = "quick_gelu", hidden: int = TEXT_HIDDEN, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden,
        vocab_size=49408, max_position_embeddings=77, hidden_act=hidden_act,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=projection_dim or hidden,
    )


def _vae(seed: int, sample_size: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=sample_size * VAE_SCALE, scaling_factor=0.18215,
    )


def _scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(prediction_type=prediction_type, **SCHEDULE)


def _sd_unet(seed: int, sample_size: int, channels: tuple[int, ...], layers_per_block: int,
             cross_dim: int, sd2: bool = False):
    """SD 1.x layout: cross-attention in every block but the deepest (SD 1.5 is CA, CA, CA, plain)."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8,
        use_linear_projection=sd2,  # SD 2.x uses linear proj_in/proj_out
    )


def tiny_sd15_components(seed: int = 0, sample_size: int = 32, unet_channels: tuple[int, ...] = (32, 64),
                         layers_per_block: int = 1, family: str = "sd15") -> dict[str, Any]:
    """In-memory tiny SD 1.5 (or SD 2.x with ``family="sd2"``) components, seeded."""
    from transformers import CLIPTextModel

    from engine.models.clip_tokenizer import load_clip_tokenizer

    sd2 = family == "sd2"
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config("gelu" if sd2 else "quick_gelu"))
    return {
        "unet": _sd_unet(seed, sample_size, tuple(unet_channels), layers_per_block, TEXT_HIDDEN, sd2=sd2),
        "vae": _vae(seed + 1, sample_size),
        "text_encoder": text_encoder.eval(),
        "tokenizer": load_clip_tokenizer(),
        "scheduler": _scheduler("v_prediction" if sd2 else "epsilon"),
    }


def _save_sd_pipeline(components: dict[str, Any], out_dir: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_sd15(out_dir: Path, seed: int = 0, sample_size: int = 32, **kwargs: Any) -> Path:
    """Save a tiny SD 1.5 diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).

    ``kwargs`` go to :func:`tiny_sd15_components` (``unet_channels``, ``layers_per_block``).
    """
    return _save_sd_pipeline(tiny_sd15_components(seed, sample_size, **kwargs), out_dir)


def build_tiny_sd2(out_dir: Path, seed: int = 0, sample_size: int = 32) -> Path:
    """Tiny SD 2.x-style folder: text encoder with ``gelu`` (OpenCLIP), v-prediction, linear projections."""
    return _save_sd_pipeline(tiny_sd15_components(seed, sample_size, family="sd2"), out_dir)


def tiny_sdxl_components(seed: int = 0, sample_size: int = 32) -> dict[str, Any]:
    """Tiny SDXL: two text encoders (CLIP-L-like + projected OpenCLIP-like), text_time added conditioning."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engine.models.clip_tokenizer import load_clip_tokenizer

    time_dim = 8
    torch.manual_seed(seed + 2)
    te1 = CLIPTextModel(_text_config("quick_gelu"))
    torch.manual_seed(seed + 3)
    # wider than the first encoder, as in SDXL (768 / 1280): loaders tell the two apart by width
    te2 = CLIPTextModelWithProjection(_text_config("gelu", hidden=TEXT2_HIDDEN, projection_dim=TEXT2_HIDDEN))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN + TEXT2_HIDDEN,  # both encoders' penultimate states, concatenated
        attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        # 6 size/crop numbers embedded at time_dim each + the pooled text_encoder_2 projection
        projection_class_embeddings_input_dim=6 * time_dim + TEXT2_HIDDEN,
    )
    tokenizer_2 = load_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # SDXL's OpenCLIP tokenizer pads with "!"
    return {
        "unet": unet, "vae": _vae(seed + 1, sample_size), "text_encoder": te1.eval(), "text_encoder_2": te2.eval(),
        "tokenizer": load_clip_tokenizer(), "tokenizer_2": tokenizer_2, "scheduler": _scheduler("epsilon"),
    }


def build_tiny_sdxl(out_dir: Path, seed: int = 0, sample_size: int = 32) -> Path:
    """Save a tiny SDXL diffusers folder (used for family detection and refusal tests)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed, sample_size))
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


CLIP_PROJECTION = 16
CLIP_IMAGE_SIZE = 32


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A tiny CLIP (text tower shaped like the tiny SD text encoder, a small ViT, a shared
    16-wide projection) saved like ``openai/clip-vit-large-patch14``: weights, image processor
    and tokenizer, for Aesthetic Gradients tests."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from engine.models.clip_tokenizer import load_clip_tokenizer

    text = _text_config(projection_dim=CLIP_PROJECTION).to_dict()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=CLIP_IMAGE_SIZE, patch_size=8, projection_dim=CLIP_PROJECTION)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_PROJECTION))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    size = CLIP_IMAGE_SIZE
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                       ).save_pretrained(out_dir)
    load_clip_tokenizer().save_pretrained(out_dir)
    return out_dir


# tiny Flux.1: the real classes (FluxTransformer2DModel, T5EncoderModel, CLIP, a 16-channel VAE)
FLUX_T5_TOKENS = 32  # what the tiny T5 tokenizer pads to (Flux.1 [dev]: 512)
FLUX_WIDTH = 32  # the transformer's width (2 heads of 16); Flux.1 [dev]: 3072
_T5_WORDS = ("a an the on of in with and background white black gray red green blue yellow purple orange pink "
             "star cross square circle triangle photo zkz").split()


def tiny_t5_tokenizer():
    """A T5 (SentencePiece Unigram) tokenizer with a few words and single letters, built with the
    ``tokenizers`` library: no vocabulary file ships offline, and a tiny model needs no real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in _T5_WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.:()"] + [("\u2581", -3.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=FLUX_T5_TOKENS)


def tiny_flux_components(seed: int = 0, double_blocks: int = 1, single_blocks: int = 1,
                         width: int = FLUX_WIDTH) -> dict[str, Any]:
    """In-memory tiny Flux.1 [dev] (guidance-distilled) components, seeded."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from engine.models.clip_tokenizer import load_clip_tokenizer

    t5_tok = tiny_t5_tokenizer()
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(_text_config())
    torch.manual_seed(seed)
    heads = width // 16
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double_blocks, num_single_layers=single_blocks,
        attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    # 8x down like Flux's own VAE (a 64 px image is 8 x 8 latents, 16 tokens)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 32, 32, 32),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return {"transformer": transformer, "vae": vae, "text_encoder": clip.eval(), "text_encoder_2": t5.eval(),
            "tokenizer": load_clip_tokenizer(), "tokenizer_2": t5_tok, "scheduler": scheduler}


def build_tiny_flux(out_dir: Path, seed: int = 0, **kwargs: Any) -> Path:
    """Save a tiny Flux.1 diffusers folder (model_index.json, transformer/, vae/, text_encoder/,
    text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)."""
    from diffusers import FluxPipeline

    out_dir = Path(out_dir)
    FluxPipeline(**tiny_flux_components(seed, **kwargs)).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
