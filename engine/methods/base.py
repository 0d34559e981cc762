"""The method registry: one object per ``network.type`` with every hook the loop, the saver,
the config and the wizard need, so nothing else tests a method's name.

Adding a method = one module that defines its ``[network]`` schema and a :class:`TrainingMethod`,
then :func:`register` (the built-in ones register in engine/methods/__init__.py). The job schema's
discriminated union is rebuilt from the registry (engine.config.job.rebuild_schema).

Torch-free at import: the hooks import the training code they drive when they run.
"""
from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from engine.models.families import UNET_FAMILY_IDS

if TYPE_CHECKING:
    import random

    import torch
    from accelerate import Accelerator

    from engine.config.base import Section
    from engine.config.job import JobConfig
    from engine.models.loader import LoadedModel
    from engine.training.setup import TrainingSetup

# what a method's files are used as, in a model card and in A1111 (``<lora:...>`` etc.)
USAGES = ("network", "embedding", "hypernetwork", "checkpoint")


@dataclass
class MethodParts:
    """What a method put into the base: the parameters that learn and its own objects."""
    unet_params: list[torch.nn.Parameter]
    te_params: list[torch.nn.Parameter]
    state: Any = None  # the method's own object (TextualInversion, a LyCORIS or hypernetwork net)
    network: Any = None  # modules hooked into the base that train()/eval() with the run
    up_params: list[torch.nn.Parameter] = field(default_factory=list)  # LoRA's B / "up" matrices (LoRA+)
    lr_scale: dict[int, float] = field(default_factory=dict)  # id(param) -> learning-rate weight (blocks)


class TrainingMethod:
    """A training method. Class attributes are facts; methods are hooks with the behaviour
    every LoRA-like method shares as their default."""

    type: str = ""  # network.type
    config: ClassVar[builtins.type[Section]]  # its [network] schema (a ``type: Literal[...]`` field)
    families: tuple[str, ...] = UNET_FAMILY_IDS  # model families it trains
    keeps_base_half: bool = True  # the frozen base is cast to the training precision
    usage: str = "network"  # one of USAGES
    civitai_type: str = "LORA"  # Civitai's model type (model card)
    file_kinds: tuple[str, ...] = ()  # engine.export.file_kind kinds its files read as
    usual_lr: tuple[float, float] = (5e-5, 2e-3)  # the range users train it in (a warning outside)
    counts_steps: bool = False  # warn when total steps are far from what such a file needs
    no_weight_decay: bool = False  # decay would pull what it learns toward zero
    placeholder: ClassVar[dict[str, Any]] = {}  # fields a default job must set (TI's token)

    # ---- schema
    def trains_text_encoder(self, net: Any) -> bool:
        """Whether the text encoder's output changes in training (then it cannot be cached)."""
        return not getattr(net, "train_unet_only", False)

    # ---- setup
    def attach(self, cfg: JobConfig, model: LoadedModel, train_te: bool, device: torch.device) -> MethodParts:
        raise NotImplementedError

    def warnings(self, net: Any) -> list[tuple[str, dict[str, Any]]]:
        """(catalogue key under ``warn.``, values) the page's Check job and the train log show."""
        return []

    def setup_notes(self, cfg: JobConfig) -> list[str]:
        """Further notes for the train log (English), after :meth:`warnings`."""
        return []

    # ---- the step
    def prompt(self, s: TrainingSetup, caption: str, rng: random.Random) -> str:
        return caption

    def predict(self, s: TrainingSetup, cfg: JobConfig, unet: torch.nn.Module, noisy: torch.Tensor,
                timesteps: torch.Tensor, hidden: torch.Tensor, added: dict | None,
                encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """The UNet's prediction for the loss; ``encode(prompts)`` conditions other prompts."""
        return unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample

    def after_optimizer_step(self, s: TrainingSetup) -> None:
        pass

    # ---- files
    def save(self, cfg: JobConfig, s: TrainingSetup, accelerator: Accelerator, path: Path,
             epoch: int, step: int, final: bool) -> Path:
        raise NotImplementedError

    def output_bytes(self, cfg: JobConfig, s: TrainingSetup) -> int:
        """About how large one saved file is (for the free-space check)."""
        from engine.training.guards import bytes_needed

        return bytes_needed(list(s.trainable), 4 if cfg.output.save_precision == "fp32" else 2)

    def kohya_network(self, net: Any) -> tuple[str, dict[str, str]]:
        """kohya's ss_network_module and ss_network_args (LoRA-like methods only)."""
        raise NotImplementedError(f"{self.type} files carry no kohya network metadata")

    def swappers(self) -> dict[str, builtins.type]:
        """file kind -> the grid's swapper class for files of that kind."""
        return {}


_REGISTRY: dict[str, TrainingMethod] = {}
_listeners: list[Callable[[], None]] = []


def register(method: TrainingMethod) -> TrainingMethod:
    """Add (or replace) a method; the job schema follows at once."""
    if method.usage not in USAGES:
        raise ValueError(f"{method.type}: usage must be one of {USAGES}")
    _REGISTRY[method.type] = method
    for listener in _listeners:
        listener()
    return method


def unregister(type_name: str) -> None:
    _REGISTRY.pop(type_name, None)
    for listener in _listeners:
        listener()


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever the registry changes (the job schema rebuilds itself)."""
    _listeners.append(listener)


def methods() -> dict[str, TrainingMethod]:
    """network.type -> method, in registration order (the wizard lists them so)."""
    return dict(_REGISTRY)


def method_of(net_or_type: Any) -> TrainingMethod:
    """The method of a ``[network]`` section (or of a network.type value)."""
    name = net_or_type if isinstance(net_or_type, str) else net_or_type.type
    return _REGISTRY[name]


def usage_of(kind: str) -> str:
    """What a file of ``kind`` (a method's type; "aesthetic" for aesthetic embeddings) is used as."""
    return _REGISTRY[kind].usage if kind in _REGISTRY else kind


def types_with(usage: str) -> tuple[str, ...]:
    return tuple(name for name, m in _REGISTRY.items() if m.usage == usage)


def config_classes() -> list[builtins.type]:
    """The [network] schemas, one per class (LyCORIS' three types share one)."""
    out: list[builtins.type] = []
    for m in _REGISTRY.values():
        if m.config not in out:
            out.append(m.config)
    return out


def swapper_table() -> dict[str, builtins.type]:
    table: dict[str, builtins.type] = {}
    for m in _REGISTRY.values():
        table |= m.swappers()
    return table


__all__ = ["MethodParts", "TrainingMethod", "USAGES", "config_classes", "method_of", "methods",
           "on_change", "register", "swapper_table", "types_with", "unregister", "usage_of"]
