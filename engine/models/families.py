"""The model families LoRA Forge trains on, one record each: every fact that differs between
SD 1.x, SD 2.x, SDXL and Flux.1 (names other programs use for them, text encoders, resolution, the
reference architecture) lives here, so code asks the record instead of testing a family's id.

Torch-free: job validation and the wizard read it without loading a model.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    id: str  # the job's model.family value
    label: str  # as shown to people
    civitai_base_model: str  # Civitai's baseModel field (model card)
    a1111_sd_version: str  # A1111's sidecar .json "sd version"
    kohya_version: str  # kohya's ss_base_model_version
    modelspec_architecture: str  # modelspec.architecture of an epsilon model
    modelspec_architecture_v: str  # ... of a v-prediction model of this family
    reference: str  # engine.models.reference architecture used for single files
    v_reference: str | None  # the architecture when a single file's weights predict v (SD 2.x 768-v)
    text_encoders: int  # SDXL: CLIP-L + OpenCLIP-G
    pooled_text: bool  # the UNet also takes the pooled text embedding and size/crop ids
    default_resolution: int
    lowest_good_resolution: int  # below this the family draws blurry results (a note at setup)
    pipeline: str  # diffusers pipeline class that samples it
    folder_scheduler: str  # the scheduler a saved diffusers folder of it gets (diffusers' default)
    stock_tokenizer: bool  # always OpenAI CLIP-L's tokenizer (a file's own is not needed)
    metadata_markers: tuple[str, ...]  # substrings of a file's metadata that name this family
    aesthetic_clip: str | None  # CLIP vision model an aesthetic embedding uses (None: not offered)
    sample_cfg: float = 7.0  # what images of this family are usually generated with (grids, cards)
    sample_steps: int = 20
    denoiser: str = "unet"  # "unet" (DDPM noise prediction) or "flux" (rectified-flow transformer)
    trains_text_encoders: bool = True  # False: frozen, their outputs computed once per fixed caption


FAMILIES: tuple[Family, ...] = (
    Family(id="sd15", label="SD 1.5", civitai_base_model="SD 1.5", a1111_sd_version="SD1", kohya_version="sd_v1",
           modelspec_architecture="stable-diffusion-v1", modelspec_architecture_v="stable-diffusion-v1",
           reference="sd15", v_reference=None, text_encoders=1, pooled_text=False, default_resolution=512,
           lowest_good_resolution=0, pipeline="StableDiffusionPipeline", folder_scheduler="PNDMScheduler",
           stock_tokenizer=True, metadata_markers=("sd_v1", "stable-diffusion-v1"),
           aesthetic_clip="openai/clip-vit-large-patch14"),
    Family(id="sd2", label="SD 2.x", civitai_base_model="SD 2.1", a1111_sd_version="SD2", kohya_version="sd_v2",
           modelspec_architecture="stable-diffusion-v2-512", modelspec_architecture_v="stable-diffusion-v2-768-v",
           reference="sd2-512", v_reference="sd2-768-v", text_encoders=1, pooled_text=False,
           default_resolution=512, lowest_good_resolution=0, pipeline="StableDiffusionPipeline",
           folder_scheduler="PNDMScheduler", stock_tokenizer=False,
           metadata_markers=("sd_v2", "stable-diffusion-v2"), aesthetic_clip="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    Family(id="sdxl", label="SDXL", civitai_base_model="SDXL 1.0", a1111_sd_version="SDXL",
           kohya_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base",
           modelspec_architecture_v="stable-diffusion-xl-v1-base", reference="sdxl", v_reference=None,
           text_encoders=2, pooled_text=True, default_resolution=1024, lowest_good_resolution=768,
           pipeline="StableDiffusionXLPipeline", folder_scheduler="EulerDiscreteScheduler", stock_tokenizer=False,
           metadata_markers=("sdxl", "stable-diffusion-xl"), aesthetic_clip=None),
    # Flux.1 [dev]: CLIP-L (pooled) + T5-XXL, a 16-channel VAE, LoRA on the transformer only;
    # "CFG" is the distilled guidance value the model is conditioned on (no negative prompt)
    Family(id="flux1", label="Flux.1", civitai_base_model="Flux.1 D", a1111_sd_version="Flux",
           kohya_version="flux1", modelspec_architecture="flux-1-dev", modelspec_architecture_v="flux-1-dev",
           reference="flux1-dev", v_reference=None, text_encoders=2, pooled_text=True, default_resolution=1024,
           lowest_good_resolution=512, pipeline="FluxPipeline", folder_scheduler="FlowMatchEulerDiscreteScheduler",
           stock_tokenizer=False, metadata_markers=("flux",), aesthetic_clip=None, sample_cfg=3.5,
           sample_steps=20, denoiser="flux", trains_text_encoders=False),
)
BY_ID: dict[str, Family] = {f.id: f for f in FAMILIES}
FAMILY_IDS: tuple[str, ...] = tuple(BY_ID)
DEFAULT = BY_ID["sd15"]  # what a file without any family hint is taken for
UNET_FAMILY_IDS: tuple[str, ...] = tuple(f.id for f in FAMILIES if f.denoiser == "unet")


def family(family_id: str) -> Family:
    """The record of ``family_id`` (a KeyError names an unknown family)."""
    return BY_ID[family_id]


def modelspec_architecture(family_id: str, prediction_type: str) -> str:
    rec = family(family_id)
    return rec.modelspec_architecture_v if prediction_type == "v_prediction" else rec.modelspec_architecture


def from_metadata_text(text: str) -> Family | None:
    """The family a file's metadata value names (kohya's version string or a modelspec
    architecture), most specific marker first ("stable-diffusion-xl" before "stable-diffusion")."""
    markers = sorted(((m, f) for f in FAMILIES for m in f.metadata_markers), key=lambda mf: -len(mf[0]))
    for marker, fam in markers:
        if marker in text:
            return fam
    return None
