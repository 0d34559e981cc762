"""Find and load a Stable Diffusion base model from a diffusers folder, a single file, or a hub id.

Users point at whatever they have: a ``.safetensors`` from a model site, a diffusers folder, or a Hugging Face
id. We work out which it is and which family (SD 1.5 / 2.x / XL) it belongs to *before* loading gigabytes, so
a wrong choice fails fast with a sentence a person can act on. Pickled checkpoints are refused: loading one
can run arbitrary code. Offline use is first-class: hub ids resolve from the local cache, and a missing
model says so plainly instead of surfacing a network stack trace.
"""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import torch

from engine.i18n import Explained
from engine.models import families
from engine.models.families import Family as FamilyRecord

Family = str  # an engine.models.families id
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Component weights + configs + tokenizers only: no root single files, fp16/EMA variants or safety checker.
HUB_ALLOW_PATTERNS = [
    "*.json", "*.txt", "tokenizer*/*",
    "*/diffusion_pytorch_model.safetensors", "*/diffusion_pytorch_model-*.safetensors",
    "*/model.safetensors", "*/model-*.safetensors",
]
HUB_IGNORE_PATTERNS = ["safety_checker/*"]
# The tiny pretrained "shapes" model shipped with the app, so everything works with no download.
EMBEDDED_NAMES = ("embedded", "embedded:shapes")
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "presets" / "base" / "shapes-base"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(Explained, RuntimeError):
    """A base model could not be found or used; the message is meant for the end user."""


@dataclass
class ResolvedSource:
    kind: Literal["diffusers", "single_file", "hub"]
    path: Path
    family: Family
    name: str


@dataclass
class LoadedModel:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    family: Family
    prediction_type: str
    source_kind: str
    name: str
    path: Path
    text_encoder_2: Any = None  # SDXL's second (OpenCLIP, projected) encoder
    tokenizer_2: Any = None
    vae_info: Any = None  # engine.models.vae.VaeInfo when a separate VAE replaced the base's

    @property
    def spec(self) -> FamilyRecord:
        """Everything that differs between families, from the family registry."""
        return families.family(self.family)

    @property
    def text_encoders(self) -> list[Any]:
        return [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]


def detect_family_from_keys(keys: Iterable[str]) -> Family:
    """Family of an original-layout checkpoint, from its text encoder key prefixes (Flux: from
    its transformer's, the only part such a file holds)."""
    from engine.models.flux import is_flux_checkpoint

    keys = list(keys)
    if is_flux_checkpoint(keys):
        return "flux1"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"  # XL base has embedders.0 (CLIP-L) + embedders.1 (OpenCLIP-G)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP ViT-H
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"  # OpenAI CLIP-L
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) for k in keys):
        raise ModelLoadError("This file is a LoRA, not a base model; pick a full Stable Diffusion checkpoint.",
                             "model_is_lora")
    if any(k.startswith(("down_blocks.", "model.diffusion_model.")) for k in keys):
        raise ModelLoadError("This file holds only a UNet (no text encoder/VAE); pick a full checkpoint "
                             "or a diffusers folder.", "model_unet_only")
    raise ModelLoadError("Not a Stable Diffusion checkpoint: no known text encoder keys "
                         "(cond_stage_model.* or conditioner.embedders.*).", "model_not_sd")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is unreadable: {err}", "model_config_unreadable", path=path,
                             error=err) from err


def detect_family_from_folder(path: Path) -> Family:
    """Family of a diffusers folder, from model_index.json and the component configs."""
    path = Path(path)
    index = _read_json(path / "model_index.json")
    if index and "unet" not in index:
        from engine.models.flux import is_flux_folder

        if is_flux_folder(index, path):
            return "flux1"
        kind = index.get("_class_name", "non-UNet")
        raise ModelLoadError(f"{path} is a {kind} model; only Stable Diffusion 1.x/2.x/XL and Flux.1 models are "
                              "supported.",
                             "model_other_pipeline", path=path, kind=kind)
    unet = _read_json(path / "unet" / "config.json")
    if ("text_encoder_2" in index or (path / "text_encoder_2").is_dir()
            or unet.get("addition_embed_type") == "text_time"):
        return "sdxl"
    text = _read_json(path / "text_encoder" / "config.json")
    if text.get("hidden_act") == "gelu" or unet.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd15"


def single_file_keys(path: Path) -> list[str]:
    """Tensor names of a .safetensors file (reads only the header)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"{path} is not a readable .safetensors file: {err}", "model_unreadable",
                             path=path) from err


def looks_like_path(base: str) -> bool:
    """A file or folder rather than a hub id (``owner/name``)."""
    if base.lower().endswith((".safetensors", *PICKLE_SUFFIXES)) or "\\" in base:
        return True
    if base.startswith(("/", "./", "../", "~")) or re.match(r"^[A-Za-z]:", base) or not _HUB_ID.match(base):
        return True
    return Path(base.split("/")[0]).expanduser().exists()  # "models/foo" with a local models/ folder


def _hub_error(repo_id: str, err: Exception) -> ModelLoadError:
    from huggingface_hub import errors

    if isinstance(err, (errors.LocalEntryNotFoundError, getattr(errors, "IncompleteSnapshotError", ()))):
        return ModelLoadError(
            f"{repo_id} is not in the local Hugging Face cache (or only partly) and the network is "
            "unavailable/offline; download it first or point to a local folder or .safetensors file.",
            "hub_offline", repo=repo_id)
    if isinstance(err, errors.GatedRepoError):
        return ModelLoadError(f"{repo_id} is gated on Hugging Face: accept its license on the website and log "
                              "in (`hf auth login`), or point to a local copy.", "hub_gated", repo=repo_id)
    if isinstance(err, errors.RepositoryNotFoundError):
        return ModelLoadError(f"{repo_id} was not found on Hugging Face (check the spelling; private repos "
                              "need a login).", "hub_not_found", repo=repo_id)
    return ModelLoadError(f"Could not fetch {repo_id} from Hugging Face: {err}", "hub_failed", repo=repo_id, error=err)


def _snapshot(repo_id: str, local_files_only: bool, cache_dir: Path | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=local_files_only, cache_dir=cache_dir,
                                      allow_patterns=patterns, ignore_patterns=HUB_IGNORE_PATTERNS))
    except Exception as err:
        raise _hub_error(repo_id, err) from err


def resolve_source(base: str, local_files_only: bool = False, cache_dir: Path | None = None,
                   allow_pickle: bool = False) -> ResolvedSource:
    """Classify ``base`` (folder, single file or hub id) and detect its family without loading weights.
    A pickle checkpoint is refused unless ``allow_pickle`` (then read tensors-only, see
    :mod:`engine.models.pickle_checkpoint`)."""
    base = str(base).strip()
    if not base:
        raise ModelLoadError("No base model given: choose a .safetensors file, a diffusers folder or a hub id.",
                             "model_none")
    if base in EMBEDDED_NAMES:
        if not (EMBEDDED_DIR / "model_index.json").is_file():
            raise ModelLoadError(f"The embedded default model is missing from {EMBEDDED_DIR}; rebuild it with "
                                 "`python -m engine.demo.pretrain` or reinstall LoRA Forge.", "model_embedded_missing",
                                 path=EMBEDDED_DIR)
        return ResolvedSource("diffusers", EMBEDDED_DIR, detect_family_from_folder(EMBEDDED_DIR), "shapes-base")
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is a folder but not a diffusers model (no model_index.json).",
                                 "model_not_diffusers", path=path)
        return ResolvedSource("diffusers", path, detect_family_from_folder(path), path.name)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and allow_pickle:
            from engine.models.pickle_checkpoint import UnsafePickleError, converted_copy

            try:
                copy = converted_copy(path)
            except UnsafePickleError as err:
                raise ModelLoadError.wrapping(err) from None
            return ResolvedSource("single_file", copy, detect_family_from_keys(single_file_keys(copy)), path.name)
        if suffix in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"{path.name} is a pickle checkpoint ({suffix}); pickles can run arbitrary code when loaded, so "
                "they are refused. Convert it to .safetensors first (or download the .safetensors version), or "
                "opt in with model.allow_pickle = true (tensors only; files that carry code stay refused).",
                "model_pickle", name=path.name)
        if suffix != ".safetensors":
            raise ModelLoadError(f"{path.name}: unsupported model file type {suffix!r}; use a .safetensors file.",
                                 "model_file_type", name=path.name, suffix=suffix)
        return ResolvedSource("single_file", path, detect_family_from_keys(single_file_keys(path)), path.name)
    if looks_like_path(base):
        raise ModelLoadError(f"Model file or folder not found: {path}", "model_not_found", path=path)
    folder = _snapshot(base, local_files_only, cache_dir, HUB_ALLOW_PATTERNS)
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{base} is not a diffusers model repo (no model_index.json).", "hub_not_diffusers",
                             repo=base)
    return ResolvedSource("hub", folder, detect_family_from_folder(folder), base)


def family_of_base(base: str) -> str:
    """The family of a base model named as a job names it, read from its configs or tensor names
    without loading it; "unknown" for a hub id (not looked up: that may need the network)."""
    if base in EMBEDDED_NAMES:
        return families.DEFAULT.id  # the embedded model is an SD 1.x architecture
    path = Path(base).expanduser()
    try:
        if path.is_dir():
            return detect_family_from_folder(path)
        if path.is_file() and path.suffix == ".safetensors":
            return detect_family_from_keys(single_file_keys(path))
    except ModelLoadError:
        pass
    return "unknown"


def _single_file_config(family: Family, explicit: Path | None) -> Path:
    """A diffusers folder describing a single file's architecture, scheduler and tokenizer: the
    one given (``model.config_dir``), else the app's own reference of that family (no network)."""
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not (explicit / "model_index.json").is_file():
            raise ModelLoadError(f"Single-file config {explicit} is not a diffusers folder (no model_index.json).",
                                 "config_not_diffusers", path=explicit)
        return explicit
    from engine.models.reference import reference_config_dir

    return reference_config_dir(families.family(family).reference)


@torch.no_grad()
def predicts_v(unet) -> bool:
    """Whether an SD 2.x UNet predicts v rather than the noise, told from the weights the way
    A1111 does: at the last timestep with a flat input, a noise-predicting model returns about
    its input, a v-predicting one something far below it."""
    param = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
    out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
    return float((out.float() - x.float()).mean()) < -1.0


def _as_v_architecture(unet, scheduler_config: dict, architecture: str) -> None:
    """Turn a UNet loaded with the SD 2 512 px reference into the 768 px v-prediction one: the
    two differ only in these settings (engine.models.reference), not in any weight's shape."""
    from diffusers.models.attention_processor import Attention

    from engine.models.reference import ARCHITECTURES

    v_unet = ARCHITECTURES[architecture]["unet"]
    scheduler_config["prediction_type"] = ARCHITECTURES[architecture]["scheduler"][1]["prediction_type"]
    unet.register_to_config(sample_size=v_unet["sample_size"], upcast_attention=v_unet["upcast_attention"])
    for module in unet.modules():
        if isinstance(module, Attention):
            module.upcast_attention = v_unet["upcast_attention"]


def _check_family(source: ResolvedSource, family: str) -> None:
    if family not in ("auto", *families.FAMILY_IDS):
        raise ModelLoadError(f"Unknown model family {family!r}; use auto or one of "
                             f"{', '.join(families.FAMILY_IDS)}.", "family_unknown", family=family,
                             families=", ".join(families.FAMILY_IDS))
    if family != "auto" and family != source.family:
        found, wanted = families.family(source.family).label, families.family(family).label
        raise ModelLoadError(f"{source.name} is an {found} model but the job is set to {wanted}; change the "
                             "model family (or use auto).", "family_mismatch", name=source.name, found=found,
                             wanted=wanted)


def _load_folder(folder: Path, family: Family, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    safe = {"use_safetensors": True}  # never fall back to pickled .bin weights
    parts = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **safe),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **safe),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **safe),
    }
    if (folder / "tokenizer").is_dir():
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    elif families.family(family).stock_tokenizer:  # SD 1.x always uses the stock CLIP-L tokenizer
        from engine.models.clip_tokenizer import load_clip_tokenizer

        parts["tokenizer"] = load_clip_tokenizer()
    else:
        raise ModelLoadError(f"{folder} has no tokenizer/ folder.", "folder_no_tokenizer", path=folder)
    if families.family(family).text_encoders == 2:
        if not (folder / "text_encoder_2").is_dir() or not (folder / "tokenizer_2").is_dir():
            raise ModelLoadError(f"{folder} is an SDXL folder without text_encoder_2/ and tokenizer_2/.",
                                 "sdxl_folder_incomplete", path=folder)
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", dtype=dtype, **safe)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    return parts


def load_sd_components(base: str, family: str = "auto", local_files_only: bool = False,
                       single_file_config: Path | None = None, dtype: torch.dtype = torch.float32,
                       cache_dir: Path | None = None, allow_pickle: bool = False,
                       vae: str | None = None, flux_files: Any = None) -> LoadedModel:
    """Load UNet, VAE, text encoder(s), tokenizer(s) and a DDPM training scheduler (SD 1.x/2.x/XL);
    ``vae`` replaces the base's VAE (engine.models.vae); ``flux_files``: Flux's text encoders as
    separate files (engine.models.flux_files.FluxFiles)."""
    from diffusers import DDPMScheduler

    source = resolve_source(base, local_files_only=local_files_only, cache_dir=cache_dir,
                            allow_pickle=allow_pickle)
    _check_family(source, family)
    if families.family(source.family).denoiser == "flux":
        return _load_flux(source, dtype, vae, local_files_only, allow_pickle, cache_dir, single_file_config,
                          flux_files)
    try:
        if source.kind == "single_file":
            import diffusers

            spec = families.family(source.family)
            config = _single_file_config(source.family, single_file_config)
            names = ["unet", "vae", "text_encoder", "tokenizer"]
            if spec.text_encoders == 2:
                names += ["text_encoder_2", "tokenizer_2"]
            pipeline = getattr(diffusers, spec.pipeline)
            no_checker = ({"safety_checker": None, "requires_safety_checker": False}
                          if "safety_checker" in inspect.signature(pipeline.__init__).parameters else {})
            pipe = pipeline.from_single_file(
                str(source.path), config=str(config), local_files_only=True, torch_dtype=dtype, **no_checker)
            parts = {n: getattr(pipe, n) for n in names}
            scheduler_config = dict(pipe.scheduler.config)
            if spec.v_reference and single_file_config is None and predicts_v(parts["unet"]):
                _as_v_architecture(parts["unet"], scheduler_config, spec.v_reference)  # SD 2.0-v / 2.1
        else:
            parts = _load_folder(source.path, source.family, dtype)
            scheduler_config = DDPMScheduler.load_config(source.path, subfolder="scheduler")
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        if source.kind == "single_file" and single_file_config is None and "shape" in str(err):
            detail = str(err).split(". If you want")[0][:300]
            raise ModelLoadError(f"{source.name}'s weights do not have the {families.family(source.family).label} "
                                 f"architecture ({detail}); for a model with other layer sizes set "
                                 "model.config_dir to a diffusers folder of its architecture",
                                 "single_file_shape", name=source.name, family=families.family(source.family).label,
                                 detail=detail) from None
        raise ModelLoadError(f"Could not load {source.name}: {err}", "model_load_failed", name=source.name,
                             error=err) from err
    vae_info = _replace_vae(parts, vae, source.family, dtype, local_files_only, allow_pickle, cache_dir)
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    return LoadedModel(**parts, noise_scheduler=noise_scheduler, vae_info=vae_info, family=source.family,
                       prediction_type=noise_scheduler.config.prediction_type, source_kind=source.kind,
                       name=source.name, path=source.path)


def load_job_base(model_cfg: Any, base: str | None = None, vae: str | None = None) -> LoadedModel:
    """The base a job's ``[model]`` names, with everything it says about it (family, config
    folder, pickles, VAE, Flux's separate encoder files); ``base`` / ``vae`` replace the job's
    (the compare step draws with the box's base and VAE, the run's settings for the rest)."""
    from engine.models.flux_files import FluxFiles

    m = model_cfg
    return load_sd_components(base or m.base, family=m.family, local_files_only=m.local_files_only,
                              allow_pickle=m.allow_pickle,
                              single_file_config=Path(m.config_dir).expanduser() if m.config_dir else None,
                              vae=vae if vae is not None else m.vae, flux_files=FluxFiles.of(m))


def _replace_vae(parts: dict[str, Any], vae: str | None, family: Family, dtype: torch.dtype, local_files_only: bool,
                 allow_pickle: bool, cache_dir: Path | None, config: Path | None = None):
    """``model.vae``: a separate VAE in place of the base's own (engine.models.vae); its record, or
    None for the base's."""
    if not vae:
        return None
    from engine.models.vae import load_vae

    parts["vae"], info = load_vae(vae, family, dtype, local_files_only, allow_pickle, cache_dir, config)
    return info


def _load_flux(source: ResolvedSource, dtype: torch.dtype, vae: str | None, local_files_only: bool,
               allow_pickle: bool, cache_dir: Path | None, components: Path | None, files: Any) -> LoadedModel:
    from engine.models.flux import load_flux_parts, load_flux_single_file

    try:
        if source.kind == "single_file":
            parts = load_flux_single_file(source.path, components, dtype, files, vae_given=bool(vae))
        else:
            parts = load_flux_parts(source.path, dtype, files=files, vae_given=bool(vae), name=source.name)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelLoadError(f"Could not load {source.name}: {err}", "model_load_failed", name=source.name,
                             error=err) from err
    # a separate VAE takes the config folder's architecture where it has one (a Flux of other sizes)
    folder = components if source.kind == "single_file" else source.path
    config = folder if folder is not None and (Path(folder) / "vae" / "config.json").is_file() else None
    vae_info = _replace_vae(parts, vae, source.family, dtype, local_files_only, allow_pickle, cache_dir, config)
    return LoadedModel(**parts, vae_info=vae_info, family=source.family, prediction_type="flow",
                       source_kind=source.kind, name=source.name, path=source.path)
