"""A1111 hypernetworks: small MLPs that reshape every attention's key/value input; the model is
untouched. Saved as A1111's .pt (its only hypernetwork format)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from engine.config.base import Section
from engine.i18n import UserInputError
from engine.methods.base import MethodParts, TrainingMethod
from engine.methods.textual_inversion import check_lr_schedule

ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "gelu", "silu", "mish",
               "softsign", "celu", "selu")


class HypernetworkConfig(Section):
    """An A1111 hypernetwork: small MLPs that reshape every attention's key/value input; the
    model is untouched. Learns slowly by design: A1111 users train at lr 5e-6 .. 1e-5."""
    type: Literal["hypernetwork"] = "hypernetwork"
    layer_structure: list[float] = Field(default_factory=lambda: [1.0, 2.0, 1.0],
                                         description="Width multipliers; starts and ends with 1.")
    activation: Literal[ACTIVATIONS] = "linear"  # type: ignore[valid-type]
    activate_output: bool = False
    layer_norm: bool = False
    dropout_structure: Optional[list[float]] = Field(
        default=None, description="Dropout after each layer, e.g. [0, 0.05, 0]: first and last 0.")
    weight_init: Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform",
                         "KaimingNormal"] = "Normal"
    lr_schedule: Optional[str] = Field(default=None, description="A1111 syntax, e.g. "
                                       "'5e-5:100, 5e-6:1500, 5e-7' (overrides optimizer.lr).")

    _schedule_parses = field_validator("lr_schedule")(check_lr_schedule)

    @field_validator("layer_structure")
    @classmethod
    def _structure(cls, values: list[float]) -> list[float]:
        if len(values) < 2 or values[0] != 1 or values[-1] != 1:
            raise UserInputError(f"must start and end with 1, e.g. [1, 2, 1] (got {values})", "cfg_layers_ends",
                                 values=values)
        if any(v <= 0 for v in values):
            raise UserInputError(f"multipliers must be > 0 (got {values})", "cfg_layers_positive", values=values)
        return values

    @model_validator(mode="after")
    def _dropout_fits(self) -> "HypernetworkConfig":
        d = self.dropout_structure
        if d is not None:
            if len(d) != len(self.layer_structure):
                raise UserInputError(f"network.dropout_structure needs one value per layer_structure "
                                     f"entry ({len(self.layer_structure)}), got {len(d)}", "cfg_dropout_count",
                                     want=len(self.layer_structure), got=len(d))
            if d[0] != 0 or d[-1] != 0 or any(not 0 <= p < 1 for p in d):
                raise UserInputError(f"network.dropout_structure: values in [0, 1), first and last 0 "
                                     f"(got {d})", "cfg_dropout_values", values=d)
        return self


class HypernetworkMethod(TrainingMethod):
    type = "hypernetwork"
    config = HypernetworkConfig
    families = ("sd15", "sd2")
    usage = "hypernetwork"
    civitai_type = "Hypernetwork"
    file_kinds = ("hypernetwork",)
    usual_lr = (1e-6, 1e-4)

    def trains_text_encoder(self, net) -> bool:
        return False

    def attach(self, cfg, model, train_te, device):
        from engine.networks.hypernetwork import Hypernetwork, widths_in_unet

        net = cfg.network  # MLPs on every attention's key/value input, in fp32
        network = Hypernetwork(widths_in_unet(model.unet), net.layer_structure, net.activation,
                               net.layer_norm, net.activate_output, net.dropout_structure,
                               net.weight_init).to(device)
        network.attach(model.unet)
        return MethodParts(list(network.parameters()), [], state=network, network=network)

    def warnings(self, net):
        from engine.networks.hypernetwork import comfyui_differences

        return [(key, {"activation": net.activation})
                for key in comfyui_differences(net.activation, net.layer_norm, net.activate_output)]

    def setup_notes(self, cfg) -> list[str]:
        from engine.models.loader import EMBEDDED_NAMES

        # (the embedded toy model's text features are small: its demo trains at 1e-3 on purpose)
        if not cfg.network.lr_schedule and cfg.optimizer.lr > 1e-4 and cfg.model.base not in EMBEDDED_NAMES:
            return [f"hypernetworks are usually trained at lr 5e-6 .. 1e-5 (A1111's default "
                    f"range); {cfg.optimizer.lr:g} may overshoot on a real model"]
        return []

    def save(self, cfg, s, accelerator, path, epoch, step, final):
        return s.network.save(path.with_suffix(".pt"), cfg.output.name, step, s.run.base_model_hash,
                              s.run.base_model_name)

    def swappers(self):
        from engine.generate.swappers import HypernetworkSwapper

        return {"hypernetwork": HypernetworkSwapper}
