"""Training methods, one module each, registered here in the order the wizard lists them.
See engine/methods/base.py for the hooks and docs/ARCHITECTURE.md for where they are called."""
from engine.methods.base import MethodParts, TrainingMethod, method_of, methods, register, types_with, usage_of
from engine.methods.full_finetune import FullFinetuneMethod
from engine.methods.hypernetwork import HypernetworkMethod
from engine.methods.lora import LoraMethod
from engine.methods.lycoris import LycorisMethod
from engine.methods.textual_inversion import DreamArtistMethod, TextualInversionMethod

for _method in (LoraMethod(), LycorisMethod("locon", (5e-5, 2e-3)), LycorisMethod("loha", (5e-5, 5e-3)),
                LycorisMethod("lokr", (5e-5, 5e-3)), FullFinetuneMethod(), TextualInversionMethod(),
                DreamArtistMethod(), HypernetworkMethod()):
    register(_method)

__all__ = ["MethodParts", "TrainingMethod", "method_of", "methods", "register", "types_with", "usage_of"]
