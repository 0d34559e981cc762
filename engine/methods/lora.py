"""LoRA (kohya's networks.lora layout): low-rank pairs on the attention/MLP linears, and on 3x3
convs with conv_dim (LoCon-style), trained through peft layers."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from engine.config.base import Section
from engine.methods.base import MethodParts, TrainingMethod


class LoraPlusFields(Section):
    """LoRA+ (Hayou et al., "LoRA+: Efficient Low Rank Adaptation of Large Models", 2024): the B
    ("up") matrices learn at ``ratio`` x the learning rate of the A ("down") ones; kohya's
    network_args of the same names. Empty = off; the UNet / text-encoder ratios override the
    shared one for their part."""
    loraplus_lr_ratio: Optional[float] = Field(default=None, ge=1.0, le=1000.0, description="LoRA+: "
                                               "the up matrices' learning rate x this; 16 usual, empty = off.")
    loraplus_unet_lr_ratio: Optional[float] = Field(default=None, ge=1.0, le=1000.0,
                                                    description="LoRA+ ratio for the UNet (empty = the one above).")
    loraplus_text_encoder_lr_ratio: Optional[float] = Field(default=None, ge=1.0, le=1000.0,
                                                            description="LoRA+ ratio for the text encoder "
                                                                        "(empty = the one above).")

    def loraplus_ratios(self) -> tuple[float, float]:
        """(UNet, text encoder) multipliers for the up matrices' learning rate (1 = off)."""
        shared = self.loraplus_lr_ratio or 1.0
        return self.loraplus_unet_lr_ratio or shared, self.loraplus_text_encoder_lr_ratio or shared

    def loraplus_args(self) -> dict[str, str]:
        """The ratios that are set, as kohya writes them into ss_network_args."""
        return {name: str(getattr(self, name)) for name in
                ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
                if getattr(self, name) is not None}


class LoraNetworkConfig(LoraPlusFields):
    type: Literal["lora"] = "lora"
    dim: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=8.0, gt=0)
    conv_dim: int = Field(default=0, ge=0, le=1024,
                          description="Rank for 3x3 convs (LoCon-style); 0 = attention/linear only.")
    conv_alpha: float = Field(default=1.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    train_unet_only: bool = False


class LoraNetworkFiles(TrainingMethod):
    """What LoRA and LyCORIS share: a kohya-keyed .safetensors with kohya's metadata."""
    counts_steps = True
    file_kinds = ("lora",)

    def state_dict(self, s, accelerator) -> dict:
        raise NotImplementedError

    def save(self, cfg, s, accelerator, path, epoch, step, final):
        import time

        from engine.export.metadata import lora_metadata
        from engine.export.safetensors_io import save_with_metadata

        meta = lora_metadata(cfg, s.index, s.run, epoch, step, finished_at=time.time())
        return save_with_metadata(self.state_dict(s, accelerator), path, meta, cfg.output.save_precision)


class LoraMethod(LoraNetworkFiles):
    type = "lora"
    config = LoraNetworkConfig

    def attach(self, cfg, model, train_te, device):
        import torch
        from diffusers.training_utils import cast_training_params

        from engine.networks import lora

        net, tes = cfg.network, model.text_encoders
        unet_params = lora.inject_lora(model.unet, lora.unet_targets(model.unet, net), net.dropout)
        te_params = [p for te in (tes if train_te else [])
                     for p in lora.inject_lora(te, lora.text_encoder_targets(te, net), net.dropout)]
        cast_training_params([model.unet, *tes], dtype=torch.float32)
        trained = {id(p) for p in unet_params + te_params}
        up = [p for m in (model.unet, *tes) for name, p in m.named_parameters()
              if ".lora_B." in name and id(p) in trained]
        return MethodParts(unet_params, te_params, up_params=up)

    def state_dict(self, s, accelerator):
        from engine.networks import lora

        state = lora.kohya_state_dict(accelerator.unwrap_model(s.model.unet), lora.UNET_PREFIX)
        if s.train_te:
            tes = s.model.text_encoders
            for prefix, te in zip(lora.te_prefixes(len(tes)), tes):
                state |= lora.kohya_state_dict(accelerator.unwrap_model(te), prefix)
        return state

    def kohya_network(self, net):
        args: dict[str, str] = {}
        if net.conv_dim:
            args = {"conv_dim": str(net.conv_dim), "conv_alpha": str(net.conv_alpha)}
        if net.dropout:
            args["dropout"] = str(net.dropout)
        return "networks.lora", args | net.loraplus_args()

    def swappers(self):
        from engine.generate.lora_apply import LoraSwapper

        return {"lora": LoraSwapper}
