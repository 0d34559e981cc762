"""How much GPU memory a job needs at its peak, known before Start and without a GPU.

One training step of the job's own architecture (its configs, real sizes) runs on *fake* tensors:
PyTorch's FakeTensorMode gives every tensor its shape and dtype but no data, so the real-size
step costs seconds on a CPU and allocates nothing. A dispatch hook counts each tensor storage
(rounded up as the CUDA caching allocator rounds) from the op that makes it until the last
reference goes; the highest count is the peak. The job's own method attaches its network, the
job's precision, gradient checkpointing, caching and text-encoder training decide what is on the
device and what is saved for backward. The optimizer's state comes from a per-type table (8-bit
optimizers cannot run on fake tensors).

Not in the count: the CUDA context and the allocator's fragmentation, covered by ``MARGIN_*``
(not yet calibrated against a GPU); xformers is counted as PyTorch's SDPA.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from engine.config.job import JobConfig

GIB = 2 ** 30
ALLOCATOR_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of this
MARGIN_FIXED_GIB = 0.5  # CUDA context + cuBLAS/cuDNN workspaces (typical, not measured here)
MARGIN_FRACTION = 0.10  # the allocator's fragmentation on top of the tensors it holds
# optimizer state per trainable parameter, bytes (fp32 masters); the 8-bit ones keep 1 byte per
# moment plus small block statistics
STATE_BYTES = {"AdamW": 8, "AdamW8bit": 2.1, "Lion": 4, "Adafactor": 0.1, "Prodigy": 16}
# the step's temporaries, as parameter-sized fp32 copies (torch's foreach AdamW keeps one)
STEP_TEMP = {"AdamW": 1, "AdamW8bit": 0, "Lion": 1, "Adafactor": 1, "Prodigy": 2}
LEFT_OUT = ("the CUDA context and the allocator's fragmentation (the margin)",
            "xformers, counted as PyTorch's SDPA")


def _allocated(nbytes: int) -> int:
    """``nbytes`` as the CUDA caching allocator holds it (rounded up to its block size)."""
    return -(-nbytes // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK


class StorageCounter(TorchDispatchMode):
    """Counts live tensor storages: each one once, from the op that makes it until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0
        self._paused = False

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = _allocated(storage.nbytes())
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def add_module(self, module: torch.nn.Module) -> None:
        for t in [*module.parameters(), *module.buffers()]:
            self.add(t)

    def _free(self, size: int) -> None:
        self.live -= size

    def restart_peak(self) -> None:
        self.peak = self.live

    @contextlib.contextmanager
    def paused(self):
        """Ops inside make tensors that are not counted (work done before the counted step)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


@dataclass(frozen=True)
class VramPrediction:
    """Bytes at the training step's peak, by what holds them, plus the margin."""
    weights: int           # the models kept on the device, as the job keeps them
    trainable: int         # what trains, with its gradients
    optimizer: int         # the optimizer's state
    activations: int       # what the step adds on top at its peak (saved activations, temporaries)
    family: str
    architecture: str
    left_out: tuple[str, ...] = LEFT_OUT
    notes: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> int:
        return self.weights + self.trainable + self.optimizer + self.activations

    @property
    def margin(self) -> int:
        return int(MARGIN_FIXED_GIB * GIB + MARGIN_FRACTION * self.tensors)

    @property
    def peak(self) -> int:
        return self.tensors + self.margin

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def line(self, vram_gib: float | None = None) -> str:
        """One sentence for the log and ``doctor``."""
        of = f" of {vram_gib:.1f} GiB" if vram_gib else ""
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in (
            ("weights", self.weights), ("trained + gradients", self.trainable), ("optimizer", self.optimizer),
            ("activations", self.activations), ("margin", self.margin)))
        return f"predicted GPU memory peak {self.peak_gib:.1f} GiB{of} ({parts} GiB)"


def fits(prediction: VramPrediction, vram_gib: float) -> bool:
    """Under 90% of the card: drivers, other apps and the desktop hold some of it."""
    return prediction.peak_gib <= 0.9 * vram_gib


def gpu_memory_gib() -> float | None:
    """This machine's first CUDA GPU's memory, or None."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GIB


def verdict(prediction: VramPrediction, vram_gib: float | None) -> str:
    """Whether the predicted peak fits a card of ``vram_gib`` (kept under 90%: drivers, other apps
    and the desktop hold some)."""
    if not vram_gib:
        return "no GPU here to compare with"
    if fits(prediction, vram_gib):
        return "fits"
    return ("does not fit: lower training.batch_size or dataset.resolution, turn on "
            "training.gradient_checkpointing, or use a smaller preset tier")


def log_line(cfg: JobConfig, device: torch.device) -> str:
    """The train log's line on a GPU: the prediction against the card's memory. A prediction
    that cannot be made never stops training; the line then says why."""
    try:
        prediction = predict_vram(cfg)
    except Exception as err:  # noqa: BLE001 - a forecast, not a step of training
        return f"could not predict the GPU memory peak ({type(err).__name__}: {err})"
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    return f"{prediction.line(total)}: {verdict(prediction, total)}"


PRECISION_LABEL = {"no": "fp32", "fp16": "fp16 mixed", "bf16": "bf16 mixed"}


def architecture_of(cfg: JobConfig) -> tuple[Path, str]:
    """(diffusers config folder, family) describing the job's base without loading any weight:
    the base's own folder, else its family's reference configs (a single file, or a hub id not
    downloaded when the job names its family)."""
    from engine.models import families
    from engine.models.loader import ModelLoadError, _single_file_config, resolve_source
    from engine.models.reference import reference_config_dir

    try:
        src = resolve_source(cfg.model.base, local_files_only=True)
    except ModelLoadError:
        if cfg.model.family == "auto":
            raise
        return reference_config_dir(families.family(cfg.model.family).reference), cfg.model.family
    if src.kind == "single_file":
        return _single_file_config(src.family, Path(cfg.model.config_dir) if cfg.model.config_dir else None), src.family
    return src.path, src.family


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _fake_model(folder: Path, family: str, dtype: torch.dtype):
    """The base's modules from its configs, on fake tensors (call inside FakeTensorMode)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.models import families
    from engine.models.clip_tokenizer import load_clip_tokenizer
    from engine.models.loader import LoadedModel

    spec = families.family(family)
    if spec.denoiser == "flux":
        return _fake_flux(folder, family, dtype)

    def tokenizer(sub: str):
        if (folder / sub).is_dir():
            return CLIPTokenizer.from_pretrained(folder, subfolder=sub)
        return load_clip_tokenizer()

    with _default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
        te2 = (CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2"))
               if spec.text_encoders == 2 else None)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))  # fp32, as in training
    return LoadedModel(unet, vae, te, tokenizer("tokenizer"), None, family, "epsilon", "fake", folder.name, folder,
                       te2, tokenizer("tokenizer_2") if te2 is not None else None)


def _fake_flux(folder: Path, family: str, dtype: torch.dtype):
    """Flux.1's transformer, VAE, CLIP-L and T5 from their configs, on fake tensors. Only the
    padded length of T5's input matters here: a folder's own tokenizer, else a stand-in that pads
    to the same 512 tokens."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from engine.models.clip_tokenizer import load_clip_tokenizer
    from engine.models.flux import T5_TOKENS, FluxDenoiser
    from engine.models.loader import LoadedModel
    from engine.models.toy import tiny_t5_tokenizer

    with _default_dtype(dtype):
        transformer = FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(folder, subfolder="transformer"))
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
        t5 = T5EncoderModel(T5Config.from_pretrained(folder, subfolder="text_encoder_2"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
    if (folder / "tokenizer_2").is_dir():
        t5_tok = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    else:
        t5_tok = tiny_t5_tokenizer()
        t5_tok.model_max_length = T5_TOKENS
    clip_tok = (load_clip_tokenizer() if not (folder / "tokenizer").is_dir()
                else AutoTokenizer.from_pretrained(folder, subfolder="tokenizer"))
    return LoadedModel(FluxDenoiser(transformer), vae, clip, clip_tok, None, family, "flow", "fake", folder.name,
                       folder, t5, t5_tok)


def _fake_to(self: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
    """``Module.to`` for fake modules: torch swaps a fake parameter in place, which fails once
    anything holds a weak reference to it, so a dtype change puts new parameters in; the device
    stays (every fake tensor is on the CPU)."""
    _, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    if dtype is None or not dtype.is_floating_point:
        return self
    for module in self.modules():
        for table in (module._parameters, module._buffers):
            for name, value in table.items():
                if value is not None and value.is_floating_point() and value.dtype != dtype:
                    moved = value.detach().to(dtype)
                    table[name] = (torch.nn.Parameter(moved, requires_grad=value.requires_grad)
                                   if isinstance(value, torch.nn.Parameter) else moved)
    return self


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(_allocated(t.numel() * t.element_size()) for t in [*module.parameters(), *module.buffers()])


def _state_bytes(optimizer: str, params: list[torch.Tensor]) -> tuple[int, int]:
    n = sum(p.numel() for p in params)
    return int(STATE_BYTES.get(optimizer, 8) * n), int(STEP_TEMP.get(optimizer, 1) * 4 * n)


@dataclass(frozen=True)
class _Quantized:
    transformer_saved: int
    t5_saved: int
    largest_dequantized: int


def _quantization_savings(cfg: JobConfig, model, dtype: torch.dtype) -> _Quantized | None:
    """training.quantize_base on Flux: bytes its transformer blocks and T5 no longer hold (from
    the shapes; bitsandbytes cannot run on fake tensors)."""
    from engine.models import flux
    from engine.models.quantize import planned_bytes

    kind = cfg.training.quantize_base
    if kind == "none":
        return None
    blocks = planned_bytes(model.unet.transformer, flux.TRANSFORMER_BLOCKS, kind, dtype)
    t5 = planned_bytes(model.text_encoders[1], flux.T5_BLOCKS, flux.T5_QUANT, dtype)
    return _Quantized(_allocated(blocks.before - blocks.after), _allocated(t5.before - t5.after),
                      max(blocks.largest_dequantized, t5.largest_dequantized))


def predict_vram(cfg: JobConfig, folder: Path | None = None, family: str | None = None) -> VramPrediction:
    """The job's peak GPU memory for one process (``folder``/``family``: the architecture, when
    the caller knows it; else read from the job's base)."""
    from engine.methods import method_of
    from engine.models import families

    if folder is None or family is None:
        folder, family = architecture_of(cfg)
    t = cfg.training
    method = method_of(cfg.network)
    mixed = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.mixed_precision)
    base_dtype = mixed if mixed is not None and method.keeps_base_half else torch.float32
    # (as training.setup: a family's frozen text encoders stay frozen)
    train_te = method.trains_text_encoder(cfg.network) and families.family(family).trains_text_encoders
    counter = StorageCounter()
    with mock.patch.object(torch.nn.Module, "to", _fake_to):
        return _predict(cfg, folder, family, method, mixed, base_dtype, train_te, counter)


def _predict(cfg, folder, family, method, mixed, base_dtype, train_te, counter) -> VramPrediction:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from engine.models import families
    from engine.training.conditioning import unet_conditioning
    from engine.training.data_setup import caches_text_encoder_outputs

    t, d = cfg.training, cfg.dataset
    flux = families.family(family).denoiser == "flux"
    latents_cached = t.cache_latents or t.cache_latents_to_disk
    te_cached = caches_text_encoder_outputs(cfg, families.family(family)) and not train_te
    b, r = t.batch_size, d.resolution
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = _fake_model(folder, family, base_dtype)
        for m in (model.unet, model.vae, *model.text_encoders):
            m.requires_grad_(False)
        quantized = _quantization_savings(cfg, model, base_dtype) if flux else None
        parts = method.attach(cfg, model, train_te, torch.device("cpu"))
        if t.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            model.unet.train()
            for te in (model.text_encoders if train_te else []):
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable = [p for p in parts.unet_params + parts.te_params if p.requires_grad]
        on_device = [model.unet]
        if not (te_cached and t.offload_after_caching):
            on_device += model.text_encoders
        if not (latents_cached and t.offload_after_caching):
            on_device.append(model.vae)
        for m in on_device:
            counter.add_module(m)
        for p in trainable:
            counter.add(p)
        weights = counted = counter.live
        # caching runs before the UNet joins the VAE and text encoders on the GPU (training.setup)
        caching_weights = sum(_module_bytes(m) for m in (model.vae, *model.text_encoders))
        if quantized is not None:  # counted at full size above: take off what quantizing saves
            weights -= quantized.transformer_saved + (quantized.t5_saved if model.text_encoders[1] in on_device
                                                       else 0)
            caching_weights -= quantized.t5_saved
        state, temp = _state_bytes(cfg.optimizer.type, trainable)
        if t.ema:  # the moving average: one more copy of what trains (engine.training.ema)
            state += sum(p.numel() * p.element_size() for p in trainable)
        channels = model.vae.config.latent_channels
        down = 2 ** (len(model.vae.config.block_out_channels) - 1)
        autocast = (torch.autocast("cpu", dtype=mixed) if mixed is not None else contextlib.nullcontext())
        with counter, autocast:
            counter.restart_peak()
            if latents_cached:  # the caching pass, one image at a time, before training
                with torch.no_grad():
                    model.vae.encode(torch.randn(1, 3, r, r)).latent_dist.mean
                cache_peak = counter.peak - counter.live
                latents = torch.randn(b, channels, r // down, r // down, dtype=mixed or torch.float32)
            else:
                cache_peak = 0
            counter.restart_peak()
            if not latents_cached:
                with torch.no_grad():
                    latents = model.vae.encode(torch.randn(b, 3, r, r)).latent_dist.mean
            captions = ["a photo of a thing, " * 20] * b  # a full 75-token caption
            batch = {"time_ids": torch.zeros(b, 6)}
            if te_cached:  # the cache was built before training: its tensors come in, no encoder runs
                with counter.paused():
                    hidden, added = unet_conditioning(model, model.text_encoders, captions, batch, t.clip_skip,
                                                      False, None, torch.device("cpu"), mixed or torch.float32)
                hidden, added = hidden.clone(), {k: v.clone() for k, v in (added or {}).items()} or None
            else:
                hidden, added = unet_conditioning(model, model.text_encoders, captions, batch, t.clip_skip,
                                                  train_te, None, torch.device("cpu"), mixed or torch.float32)
            noise = torch.randn_like(latents)
            timesteps = torch.full((b,), 0.5) if flux else torch.full((b,), 500)  # a flow sigma / a DDPM step
            pred = model.unet(latents + noise, timesteps, hidden, added_cond_kwargs=added).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            loss.backward()
            del loss, pred, hidden, added, noise, latents
            step_peak = counter.peak - counted
            after_backward = counter.live - counted
    grads = sum(p.numel() * p.element_size() for p in trainable)
    own = sum(p.numel() * p.element_size() for p in trainable) + grads
    activations = max(step_peak, after_backward + temp) - grads
    notes = []
    training_total = weights + grads + state + activations
    if caching_weights + cache_peak > training_total:  # caching is the peak: shown as activations
        activations += caching_weights + cache_peak - training_total
        notes.append("the peak is while latents are cached, before training")
    if quantized is not None:
        # each quantized matmul dequantizes its layer's weight (and backward its transpose)
        activations += 2 * quantized.largest_dequantized
        notes.append(f"transformer blocks {t.quantize_base}, T5 int8 (bitsandbytes)")
    if cfg.training.attention == "xformers":
        notes.append("xformers counted as SDPA")
    return VramPrediction(weights=weights - (own - grads), trainable=own, optimizer=state,
                          activations=max(activations, 0), family=family, architecture=folder.name, notes=notes)

