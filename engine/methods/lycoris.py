"""LyCORIS through lycoris-lora: LoCon (low rank incl. 3x3 convs), LoHa (Hadamard product of two
low-rank pairs), LoKr (Kronecker product); one schema, three network.type values."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from engine.i18n import UserInputError
from engine.methods.base import MethodParts
from engine.methods.lora import DoraField, LoraNetworkFiles, LoraPlusFields


class LycorisNetworkConfig(LoraPlusFields, DoraField):
    """LyCORIS through lycoris-lora: LoCon (low rank incl. 3x3 convs), LoHa (Hadamard product of
    two low-rank pairs: rank up to dim^2 for the same file size), LoKr (Kronecker product)."""
    type: Literal["locon", "loha", "lokr"]
    dim: int = Field(default=8, ge=1, le=100000,
                     description="Rank (LoKr: a dim larger than the layer means a full w2 matrix).")
    alpha: float = Field(default=4.0, gt=0)
    conv_dim: Optional[int] = Field(default=None, ge=0, le=100000,
                                    description="Rank for 3x3 convs; empty = dim, 0 = no 3x3 convs.")
    conv_alpha: Optional[float] = Field(default=None, gt=0, description="Empty = alpha.")
    preset: Literal["full", "attn-mlp", "attn-only"] = Field(
        default="full", description="Which modules learn: full = every UNet linear/conv "
        "(LyCORIS' default), attn-mlp = the classic LoRA targets, attn-only = attention only.")
    factor: int = Field(default=-1, description="LoKr: Kronecker factor (-1 = as square as possible).")
    decompose_both: bool = Field(default=False, description="LoKr: low-rank w1 as well as w2.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    rank_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    module_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    train_unet_only: bool = False

    @model_validator(mode="after")
    def _lokr_only_fields(self) -> "LycorisNetworkConfig":
        if self.type != "locon" and self.loraplus_args():
            raise UserInputError(f"network.loraplus_*: LoRA+ speeds up the up matrices of LoRA and LoCon; "
                                 f"{self.type} has none", "cfg_loraplus_type", type=self.type)
        if self.type != "lokr" and (self.factor != -1 or self.decompose_both):
            raise UserInputError(f"network.factor / network.decompose_both only apply to 'lokr' "
                                 f"(type is {self.type!r})", "cfg_lokr_only", type=self.type)
        if self.factor != -1 and self.factor < 1:
            raise UserInputError(f"network.factor: -1 (automatic) or a positive integer (got {self.factor})",
                                 "cfg_factor", value=self.factor)
        return self


class LycorisMethod(LoraNetworkFiles):
    config = LycorisNetworkConfig
    civitai_type = "LoCon"  # Civitai files LoHa and LoKr as LoCon too

    def __init__(self, algo: str, usual_lr: tuple[float, float]) -> None:
        self.type, self.usual_lr = algo, usual_lr
        # LoCon files hold lora_down/lora_up only (read as LoRA) unless they carry DoRA
        # magnitudes; LoHa/LoKr need lycoris-lora
        self.file_kinds = ("lora", "lycoris") if algo == "locon" else ("lycoris",)

    def attach(self, cfg, model, train_te, device):
        import torch

        from engine.networks import lycoris_net

        tes = model.text_encoders
        network = lycoris_net.create_network(model.unet, tes if train_te else None, cfg.network)
        network.to(device, dtype=torch.float32)  # the network's own modules learn, in fp32
        up = [p for m in (*network.unet_loras, *network.text_encoder_loras)
              for name, p in m.named_parameters() if name.startswith("lora_up") and p.requires_grad]
        return MethodParts([p for m in network.unet_loras for p in m.parameters() if p.requires_grad],
                           [p for m in network.text_encoder_loras for p in m.parameters() if p.requires_grad],
                           state=network, network=network, up_params=up)

    def state_dict(self, s, accelerator):
        from engine.networks import lycoris_net

        return lycoris_net.file_state_dict(s.network, s.model.text_encoders,
                                           accelerator.unwrap_model(s.model.unet))

    def kohya_network(self, net):
        args = {"algo": net.type, "preset": net.preset,
                "conv_dim": str(net.dim if net.conv_dim is None else net.conv_dim),
                "conv_alpha": str(net.alpha if net.conv_alpha is None else net.conv_alpha)}
        if self.type == "lokr":
            args |= {"factor": str(net.factor), "decompose_both": str(net.decompose_both)}
        if net.dora_wd:  # LyCORIS' names; the magnitude on the input axis (see DoraField)
            args |= {"dora_wd": "True", "wd_on_output": "False"}
        for name in ("dropout", "rank_dropout", "module_dropout"):
            if getattr(net, name):
                args[name] = str(getattr(net, name))
        return "lycoris.kohya", args | net.loraplus_args()

    def swappers(self):
        from engine.generate.swappers import LycorisSwapper

        return {"lycoris": LycorisSwapper} if "lycoris" in self.file_kinds else {}
