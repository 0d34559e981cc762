"""Typed job configuration: one TOML file describes one training job.

Why pydantic with extra="forbid": a typo in a hand-written TOML (``learning_rate`` instead of
``lr``) must fail loudly instead of silently training with a default. Every error is re-worded
as ``section.field: reason`` so a newcomer knows which line to fix.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import tomli_w
from pydantic import Field, ValidationError, field_validator, model_validator

from engine.config.base import ConfigError, Section, path_field
from engine.config.sample_limits import SAMPLE_LIMITS
from engine.i18n import UserInputError, describe_problems
from engine.methods.lora import LoraNetworkConfig
from engine.models.families import FAMILY_IDS

SCHEMA_VERSION = 1


class ModelConfig(Section):
    base: str = path_field("model", description="Diffusers folder, single-file .safetensors, or hub id.")
    family: Literal[("auto", *FAMILY_IDS)] = "auto"  # type: ignore[valid-type]
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    local_files_only: bool = Field(
        default=False, description="Never touch the network; hub ids must already be cached."
    )
    config_dir: Optional[str] = path_field(
        "folder", default=None, description="Diffusers folder describing a single-file model's architecture; "
        "empty: LoRA Forge's own reference of its family (SD 1.5, SD 2.x with v-prediction detected, SDXL).")
    vae: Optional[str] = path_field(
        "model", default=None, description="A separate VAE (.safetensors file, diffusers folder or hub id) "
        "that encodes the training images and decodes the samples; empty: the base model's own.")
    clip_l: Optional[str] = path_field(
        "file", default=None, description="Flux: CLIP-L as a separate file (ComfyUI's models/clip/clip_l.safetensors); "
        "empty: model.config_dir's text_encoder.")
    t5xxl: Optional[str] = path_field(
        "file", default=None, description="Flux: T5-XXL as a separate file (t5xxl_fp16.safetensors, fp8 works too); "
        "empty: model.config_dir's text_encoder_2.")
    t5_tokenizer: Optional[str] = path_field(
        "folder", default=None, description="Flux: a folder with T5's tokenizer.json; empty: model.config_dir's "
        "tokenizer_2, else the ComfyUI installation model.t5xxl is in (comfy/text_encoders/t5_tokenizer).")
    allow_pickle: bool = Field(
        default=False, description="Accept a .ckpt/.pt/.pth/.bin base model. Pickles can run code "
        "when loaded; even with this on, only tensors are read (torch.load weights_only=True) and a "
        "file that carries code is refused.")


class DatasetConfig(Section):
    path: str = path_field("folder")
    resolution: int = Field(default=512, ge=64, le=4096, multiple_of=64)
    default_repeats: int = Field(default=1, ge=1, le=10000,
                                 description="Repeats for folders without an N_ prefix.")
    caption_extension: str = Field(default=".txt", pattern=r"^\.[A-Za-z0-9_-]{1,16}$",
                                   description="Suffix of the caption files beside the images "
                                   "(a suffix, never a path).")
    shuffle_caption: bool = False
    keep_tokens: int = Field(default=0, ge=0)
    caption_dropout_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    tag_dropout_rate: float = Field(default=0.0, ge=0.0, lt=1.0,
                                    description="Drop each tag (after keep_tokens) with this chance.")
    flip_aug: bool = False
    reg_path: Optional[str] = path_field("folder", default=None, description="Regularization / class images "
                                    "(kohya N_class folders); used as many times as training images.")
    prior_loss_weight: float = Field(default=1.0, ge=0.0, le=10.0)
    class_prompt: Optional[str] = Field(default=None, description="DreamBooth class prompt, e.g. "
                                        "'a photo of a dog': caption of generated class images.")
    num_class_images: int = Field(default=0, ge=0, le=100000, description="Generate class images "
                                  "with the base model until reg_path holds this many (0 = never).")
    prior_preservation: bool = Field(default=False, description="Against bleed: the base draws one "
                                     "image per training image from its caption without the trigger "
                                     "words, and training keeps those prompts as the base drew them "
                                     "(kept in reg_path, else <output dir>/prior_images).")
    keep_prompts: list[str] = Field(default_factory=list, max_length=500, description="With prior_preservation: "
                                    "other prompts the add-on should leave as the base draws them (one image "
                                    "each), e.g. other subjects of your model's world; unused without it.")
    # masked loss: where each image's loss counts (with training.masked_loss)
    alpha_mask: bool = Field(default=False, description="Masked loss from the images' transparency: "
                             "transparent parts are not learned (kohya's alpha_mask).")
    mask_path: Optional[str] = path_field("folder", default=None, description="Masked loss from mask images "
                                          "named like the images (white = learn, black = ignore); kohya's "
                                          "conditioning_data_dir.")
    # validation loss (kohya sd-scripts' names): held-out images the training never sees
    validation_split: float = Field(default=0.0, ge=0.0, le=0.5, description="Share of the images held "
                                    "out to measure a validation loss, 0.1-0.2 usual; 0 = off.")
    validation_path: Optional[str] = path_field("folder", default=None, description="A folder of images "
                                                "(with captions) to measure the validation loss on, instead "
                                                "of holding out a share.")
    validation_seed: Optional[int] = Field(default=None, ge=0, le=2**32 - 1, description="Seed of the "
                                           "held-out choice and the fixed validation noise; empty = training.seed.")
    enable_bucket: bool = Field(default=False, description="Aspect-ratio buckets instead of square crops.")
    min_bucket_reso: int = Field(default=256, ge=64, le=4096, multiple_of=64)
    max_bucket_reso: int = Field(default=1024, ge=64, le=8192, multiple_of=64)
    bucket_no_upscale: bool = False


# The network is a discriminated union on `type`, one member per registered method's schema
# (engine/methods); rebuild_schema() follows the registry when a method is added.
def _network_union() -> Any:
    # (importing engine.methods, as the LoraNetworkConfig import above does, registers the built-in ones)
    from engine.methods.base import config_classes

    classes = tuple(config_classes())
    return Annotated[Union[classes], Field(discriminator="type")]


NetworkConfig: Any = _network_union()  # a type built at run time: mypy sees Any


OptimizerName = Literal["AdamW", "AdamW8bit", "Adafactor", "Lion", "Prodigy"]
SchedulerName = Literal["constant", "constant_with_warmup", "cosine", "cosine_with_restarts",
                        "linear", "polynomial"]


class OptimizerConfig(Section):
    type: OptimizerName = "AdamW"
    lr: float = Field(default=1e-4, gt=0, le=10.0)
    unet_lr: Optional[float] = Field(default=None, gt=0, le=10.0)
    text_encoder_lr: Optional[float] = Field(default=None, gt=0, le=10.0)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0, description="0 disables clipping.")


class SchedulerConfig(Section):
    type: SchedulerName = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    num_cycles: int = Field(default=1, ge=1, description="Restarts for cosine_with_restarts.")
    power: float = Field(default=1.0, gt=0, description="Exponent for polynomial decay.")


class TrainingConfig(Section):
    epochs: int = Field(default=10, ge=1, le=100000)
    max_steps: Optional[int] = Field(default=None, ge=1, description="Stops early when reached.")
    batch_size: int = Field(default=1, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"
    cache_latents: bool = True
    cache_latents_to_disk: bool = Field(
        default=False, description="Keep latents in the cache folder across runs (keyed by file "
                                   "hash, size and VAE); implies cache_latents.")
    cache_text_encoder_outputs: bool = Field(
        default=False, description="Encode each caption once; needs a frozen text encoder and "
                                   "fixed captions (no shuffle/dropout).")
    offload_after_caching: bool = Field(
        default=False, description="'medvram': move VAE (and a frozen text encoder) to CPU.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    noise_offset: float = Field(default=0.0, ge=0.0, le=1.0)
    min_snr_gamma: Optional[float] = Field(default=None, gt=0)
    # noise and loss options under kohya sd-scripts' names (README: "Noise and loss options")
    multires_noise_iterations: int = Field(default=0, ge=0, le=10, description="Multi-resolution "
                                           "noise levels, 6-10 usual; 0 = off.")
    multires_noise_discount: float = Field(default=0.3, gt=0.0, lt=1.0, description="Weight of each "
                                           "coarser level (to the level's power), 0.1-0.3 usual.")
    ip_noise_gamma: float = Field(default=0.0, ge=0.0, le=1.0, description="Input perturbation: extra "
                                  "noise on the input only, 0.1 usual; 0 = off.")
    zero_terminal_snr: bool = Field(default=False, description="Rescale the noise schedule so the last "
                                    "timestep is pure noise (v-prediction models only).")
    debiased_estimation_loss: bool = Field(default=False, description="Weight the loss by 1/sqrt(SNR) "
                                           "so low-noise timesteps count less.")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = Field(
        default="l2", description="l2 = mean squared error; huber / smooth_l1 bound the pull of "
                                  "outlier images.")
    huber_schedule: Literal["constant", "exponential", "snr"] = Field(
        default="snr", description="How the Huber threshold changes with the timestep.")
    huber_c: float = Field(default=0.1, gt=0.0, le=1.0, description="Huber threshold (its lowest "
                           "value for the exponential and snr schedules), 0.1 usual.")
    huber_scale: float = Field(default=1.0, gt=0.0, le=10.0, description="Multiplies the constant and "
                               "exponential thresholds.")
    # Flux.1 (rectified flow) only; kohya's names
    timestep_sampling: Literal["flux_shift", "shift"] = Field(
        default="flux_shift", description="Flux: how noise levels are drawn; flux_shift follows the image "
                                          "size as Flux samples, shift uses discrete_flow_shift.")
    discrete_flow_shift: float = Field(default=3.1582, gt=0.0, le=100.0, description="Flux: the shift for "
                                       "timestep_sampling = shift (3.16 = what flux_shift gives at 1024 px).")
    quantize_base: Literal["none", "int8", "nf4"] = Field(
        default="none", description="Flux: keep the frozen transformer in 8 bits (int8) or 4 bits (nf4) so "
                                    "it fits 12-24 GB cards (T5 then in int8); bitsandbytes, a little slower.")
    flux_guidance: float = Field(default=1.0, ge=0.0, le=30.0, description="Flux.1 [dev]: the guidance value "
                                 "training conditions on (1.0 usual; samples use 3.5).")
    min_timestep: int = Field(default=0, ge=0, le=999, description="Train only timesteps from here.")
    max_timestep: int = Field(default=1000, ge=1, le=1000, description="... up to (not including) here.")
    clip_skip: int = Field(default=1, ge=1, le=12)
    masked_loss: bool = Field(default=False, description="Weight the loss per pixel by each image's mask "
                              "(dataset.alpha_mask or dataset.mask_path): the masked-out parts are not learned.")
    ema: bool = Field(default=False, description="Keep an exponential moving average (EMA) of the trained "
                      "weights; the saved files, samples and validation loss are the average.")
    ema_decay: float = Field(default=0.999, ge=0.5, lt=1.0, description="The average's decay (it warms up "
                             "over the first steps); 0.999 for thousands of steps, 0.99-0.995 for a few hundred.")
    validate_every_n_epochs: int = Field(default=1, ge=0, description="Validation loss every N epochs "
                                         "(with a validation set); 0 = not per epoch.")
    validate_every_n_steps: int = Field(default=0, ge=0, description="Validation loss every N steps as "
                                        "well; 0 = off.")


class OutputConfig(Section):
    dir: str = path_field("folder", default="output")
    name: str = Field(default="my_lora", min_length=1, max_length=128,
                      pattern=r"^[^/\\:*?\"<>|\x00-\x1f]+$")
    save_every_n_epochs: int = Field(default=1, ge=0, description="0 = only the final file.")
    save_state: bool = Field(default=False, description="Also save a resumable training state with "
                             "each epoch file and when stopped (train --resume continues from it).")
    save_state_every_n_steps: int = Field(default=0, ge=0, description="Save the resumable state "
                                          "every N steps as well (0 = off).")
    keep_states: int = Field(default=2, ge=1, le=100, description="Saved states to keep; older "
                             "ones are deleted.")
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    author: str = ""
    description: str = ""
    trigger_phrase: str = ""
    log_with: Literal["none", "tensorboard"] = Field(
        default="none", description="Also log loss, lr and samples for TensorBoard.")
    logging_dir: Optional[str] = path_field("folder", default=None, description="TensorBoard logs; empty = "
                                       "<output dir>/logs (one <name>_<date-time> folder per run).")


class SampleConfig(Section):
    """Images generated while training, to watch a LoRA learn (kohya prompt-line syntax)."""
    prompts: list[str] = Field(default_factory=list,
                               description="prompt --n negative --w 512 --h 512 --d seed --s steps --l cfg")
    every_n_epochs: int = Field(default=0, ge=0, description="0 = never")
    every_n_steps: int = Field(default=0, ge=0, description="0 = never")
    sampler: Literal["euler_a", "euler", "ddim"] = "euler_a"
    steps: int = Field(default=20, ge=SAMPLE_LIMITS["steps"][0], le=SAMPLE_LIMITS["steps"][1])
    cfg_scale: float = Field(default=7.0, ge=SAMPLE_LIMITS["cfg_scale"][0], le=SAMPLE_LIMITS["cfg_scale"][1])
    seed: int = Field(default=42, ge=SAMPLE_LIMITS["seed"][0], le=SAMPLE_LIMITS["seed"][1])

    @field_validator("prompts")
    @classmethod
    def _lines_parse(cls, lines: list[str]) -> list[str]:
        from engine.generate.prompts import PromptLineError, parse_prompt_line
        from engine.generate.sampler import SampleSpec

        for i, line in enumerate(lines):
            try:
                parse_prompt_line(line, SampleSpec(""))
            except PromptLineError as err:
                raise UserInputError(f"line {i + 1}: {err}", "cfg_prompt_line", line=i + 1, error=err) from None
        return lines


class JobConfig(Section):
    schema_version: int = SCHEMA_VERSION
    model: ModelConfig
    dataset: DatasetConfig
    network: NetworkConfig = Field(default_factory=LoraNetworkConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_network_type(cls, data: Any) -> Any:
        net = data.get("network") if isinstance(data, dict) else None
        if isinstance(net, dict) and "type" not in net:
            data = {**data, "network": {**net, "type": "lora"}}
        return data

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "JobConfig":
        if self.schema_version != SCHEMA_VERSION:
            raise UserInputError(f"schema_version {self.schema_version} is not supported "
                                 f"(this build reads {SCHEMA_VERSION})", "cfg_schema", version=self.schema_version,
                                 supported=SCHEMA_VERSION)
        if self.scheduler.type == "constant" and self.scheduler.warmup_steps:
            raise UserInputError("scheduler.warmup_steps needs scheduler.type "
                                 "'constant_with_warmup' (or another schedule); 'constant' ignores it",
                                 "cfg_warmup_constant")
        d, t = self.dataset, self.training
        if d.enable_bucket and not d.min_bucket_reso <= d.resolution <= d.max_bucket_reso:
            raise UserInputError("dataset.min_bucket_reso <= dataset.resolution <= dataset.max_bucket_reso "
                                 f"is needed for buckets (got {d.min_bucket_reso}, {d.resolution}, "
                                 f"{d.max_bucket_reso})", "cfg_bucket_range", low=d.min_bucket_reso,
                                 resolution=d.resolution, high=d.max_bucket_reso)
        if d.num_class_images and not (d.class_prompt and d.reg_path):
            raise UserInputError("dataset.num_class_images needs dataset.class_prompt and dataset.reg_path "
                                 "(where the generated class images are kept)", "cfg_class_images")
        if any(not p.strip() or len(p) > 1000 for p in d.keep_prompts):
            raise UserInputError("dataset.keep_prompts: one prompt per line, none empty, each under 1000 "
                                 "characters", "cfg_keep_prompts_lines")
        if d.prior_preservation and not self.output.trigger_phrase.strip():
            raise UserInputError("dataset.prior_preservation needs output.trigger_phrase: the base's "
                                 "images are drawn from your captions without it", "cfg_prior_trigger")
        if self.training.cache_text_encoder_outputs:
            from engine.data.captions import caption_is_fixed

            if trains_text_encoder(self.network):
                raise UserInputError("training.cache_text_encoder_outputs needs a frozen text encoder: "
                                     "set network.train_unet_only = true (LoRA) or "
                                     "network.train_text_encoder = false", "cfg_cache_te_trained")
            if not caption_is_fixed(d.shuffle_caption, d.caption_dropout_rate, d.tag_dropout_rate):
                raise UserInputError("training.cache_text_encoder_outputs cannot be combined with "
                                     "dataset.shuffle_caption / caption_dropout_rate / tag_dropout_rate "
                                     "(the captions change every step)", "cfg_cache_te_changing")
        if t.masked_loss != (d.alpha_mask or bool(d.mask_path)) or (d.alpha_mask and d.mask_path):
            raise UserInputError("training.masked_loss needs one source of masks, dataset.alpha_mask (the images' "
                                 "transparency) or dataset.mask_path (a folder of mask images), and a source of "
                                 "masks needs training.masked_loss = true", "cfg_masked_loss")
        if d.validation_split and d.validation_path:
            raise UserInputError("dataset.validation_split and dataset.validation_path: choose one (hold out a "
                                 "share of the images, or give a folder of validation images)",
                                 "cfg_validation_both")
        if t.multires_noise_iterations and t.noise_offset:
            raise UserInputError("training.noise_offset and training.multires_noise_iterations cannot be "
                                 "used together (both shape the noise; choose one)", "cfg_noise_both")
        if t.min_timestep >= t.max_timestep:
            raise UserInputError(f"training.min_timestep ({t.min_timestep}) must be below "
                                 f"training.max_timestep ({t.max_timestep})", "cfg_timestep_range",
                                 low=t.min_timestep, high=t.max_timestep)
        if self.optimizer.type == "Prodigy" and self.optimizer.lr < 0.1:
            raise UserInputError("optimizer.lr: Prodigy adapts the step size itself; "
                                 "set lr to about 1.0 (got %g)" % self.optimizer.lr, "cfg_prodigy_lr",
                                 value=f"{self.optimizer.lr:g}")
        return self


def trains_text_encoder(net: Any) -> bool:
    """Whether the text encoder's output changes during training (it cannot be cached then)."""
    from engine.methods import method_of

    return method_of(net).trains_text_encoder(net)


JOB_SUFFIX = "_job.toml"  # the trainer saves each job as <output.dir>/<output.name>_job.toml

def network_types() -> tuple[str, ...]:
    """The network.type values, in the registry's order."""
    from engine.methods import methods

    return tuple(methods())


def rebuild_schema() -> None:
    """Rebuild the job schema's [network] union from the method registry."""
    from pydantic.fields import FieldInfo

    global NetworkConfig
    NetworkConfig = _network_union()
    JobConfig.model_fields["network"] = FieldInfo.from_annotated_attribute(
        NetworkConfig, Field(default_factory=LoraNetworkConfig))
    JobConfig.model_rebuild(force=True)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older config dict up to SCHEMA_VERSION (no-op for version 1)."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int):
        raise ConfigError(f"schema_version: must be an integer (got {version!r})")
    if version < 1:
        raise ConfigError(f"schema_version: {version} is not a valid version (versions start at 1)")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"schema_version: {version} is newer than this build understands "
                          f"({SCHEMA_VERSION}); update LoRA Forge")
    return {**data, "schema_version": SCHEMA_VERSION}


_OWN_WORDS = {"extra_forbidden": "unknown field (check the spelling)",
              "missing": "required field is missing"}


def validation_problems(err: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as plain problems; a validator's keyed error (engine.i18n.Explained) is
    kept as ``cause`` so it can be said in another language."""
    out = []
    types = network_types()  # the union's tag in a location is not a field
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        out.append({"loc": ".".join(str(p) for p in e["loc"] if p not in types), "type": e["type"],
                    "ctx": {k: str(v) for k, v in (e.get("ctx") or {}).items()}, "input": e.get("input"),
                    "msg": _OWN_WORDS.get(e["type"], e["msg"].removeprefix("Value error, ")),
                    "cause": cause if getattr(cause, "key", None) else None})
    return out


def parse_config(data: dict[str, Any]) -> JobConfig:
    try:
        return JobConfig.model_validate(migrate(data))
    except ValidationError as err:
        problems = validation_problems(err)
        raise ConfigError(describe_problems(problems), problems) from None


MAX_JOB_BYTES = 1 << 20  # a job or preset is a few KB; a larger "job" is a mistake


def read_toml(text: str, path: str | Path | None = None) -> dict[str, Any]:
    """TOML text (of the file ``path``, if it came from one) as a dict. Bad TOML, and nesting too
    deep for the parser (it recurses: ``a = [[[[...]]]]`` a thousand deep), become one
    ConfigError, never a traceback."""
    where = f"{path}: " if path else ""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        if path:
            raise ConfigError(f"{where}not valid TOML: {err}", key="toml_file_invalid", path=path,
                              error=err) from None
        raise ConfigError(f"not valid TOML: {err}", key="toml_invalid", error=err) from None
    except RecursionError:
        message = f"{where}arrays or tables nested too deeply to be a job"
        if path:
            raise ConfigError(message, key="toml_file_too_deep", path=path) from None
        raise ConfigError(message, key="toml_too_deep") from None


def read_toml_file(path: str | Path) -> dict[str, Any]:
    """A TOML file (UTF-8, a BOM allowed) as a dict; every way it can fail is a ConfigError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", key="config_not_found", path=path) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give the job's .toml file", key="config_is_folder",
                          path=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}", key="config_unreadable", path=path,
                          error=err.strerror or err) from None
    if len(data) > MAX_JOB_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_JOB_BYTES >> 10} KB: not a job file", key="config_too_big",
                          path=path, kb=MAX_JOB_BYTES >> 10)
    from engine.fileio import decode_user_text

    text = decode_user_text(data)
    if text is None:
        raise ConfigError(f"{path} is not UTF-8 text (save it as UTF-8)", key="config_not_utf8",
                          path=path) from None
    return read_toml(text, path)


def parse_job_text(text: str) -> JobConfig:
    """A job as the web app receives it: TOML text, checked field by field."""
    return parse_config(read_toml(text))


def load_config(path: str | Path) -> JobConfig:
    return parse_config(read_toml_file(path))


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=True)


def dump_config(cfg: JobConfig) -> str:
    return tomli_w.dumps(config_to_dict(cfg))


def save_config(cfg: JobConfig, path: str | Path) -> None:
    from engine.fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), dump_config(cfg).encode("utf-8"))


from engine.methods.base import on_change  # noqa: E402  (the registry needs this module's names first)

on_change(rebuild_schema)
