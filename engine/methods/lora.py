"""LoRA (kohya's networks.lora layout): low-rank pairs on the attention/MLP linears, and on 3x3
convs with conv_dim (LoCon-style), trained through peft layers."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from engine.config.base import Section
from engine.i18n import UserInputError
from engine.methods.base import MethodParts, TrainingMethod
from engine.methods.blocks import LAYOUTS, SD, BlockLayout, block_index, layout_for, lr_weight
from engine.models.families import FAMILY_IDS


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


class DoraField(Section):
    """DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", 2024): each weight is
    split into a magnitude per input channel (learned as is) and a direction (learned low-rank).
    Trained through LyCORIS' ``dora_wd`` with the magnitude on the input axis, the one layout
    A1111 1.10+ and ComfyUI both apply with DoRA's own math (file key ``dora_scale``)."""
    dora_wd: bool = Field(default=False, description="DoRA: learn each input channel's magnitude apart "
                          "from its direction (LoCon/LoHa/LoKr).")


# the block settings, as kohya names them in network_args (ss_network_args); blocks numbered as
# engine.methods.blocks numbers them for the UNet's family
BLOCK_LISTS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
               "mid_lr_weight", "up_lr_weight")
_LR_LENGTHS = {"down_lr_weight": "per_side", "up_lr_weight": "per_side", "mid_lr_weight": "mid"}


def _block_list(description: str) -> Any:
    """An optional list with one value per block, kohya's order (its length says the family)."""
    return Field(default=None, description=description)


class LoraNetworkConfig(LoraPlusFields, DoraField):
    type: Literal["lora"] = "lora"
    dim: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=8.0, gt=0)
    conv_dim: int = Field(default=0, ge=0, le=1024,
                          description="Rank for 3x3 convs (LoCon-style); 0 = attention/linear only.")
    conv_alpha: float = Field(default=1.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    train_unet_only: bool = False
    # kohya's block learning-rate weights: a block at 0 gets no LoRA at all
    down_lr_weight: Optional[list[float]] = _block_list(
        "Learning-rate weights of the UNet's down blocks: 12 (SD 1.x/2.x, IN00-IN11) or 9 (SDXL, "
        "IN00-IN08); empty = all 1.")
    mid_lr_weight: Optional[list[float]] = _block_list(
        "Learning-rate weight of the middle block: 1 value (SD 1.x/2.x) or 3 (SDXL); empty = 1.")
    up_lr_weight: Optional[list[float]] = _block_list(
        "Learning-rate weights of the UNet's up blocks: 12 (OUT00-OUT11) or 9 (SDXL, OUT00-OUT08); empty = all 1.")

    # kohya's per-block ranks and alphas, one per block (0 = no LoRA there)
    block_dims: Optional[list[int]] = _block_list(
        "Ranks, one per UNet block: 25 (SD 1.x/2.x: IN00-IN11, MID, OUT00-OUT11) or 23 (SDXL: BASE, "
        "IN00-IN08, MID0-2, OUT00-OUT08, OUT); empty = dim everywhere.")
    block_alphas: Optional[list[float]] = _block_list("Alphas to go with block_dims; empty = alpha everywhere.")
    conv_block_dims: Optional[list[int]] = _block_list(
        "Ranks for the 3x3 convs per block (LoCon-style), as many as block_dims; empty = conv_dim everywhere.")
    conv_block_alphas: Optional[list[float]] = _block_list(
        "Alphas to go with conv_block_dims; empty = conv_alpha everywhere.")

    @field_validator("mid_lr_weight", mode="before")
    @classmethod
    def _one_mid_weight(cls, value: Any) -> Any:
        """``mid_lr_weight = 0.5`` (SD's one middle block) as well as a list."""
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _block_lists(self) -> "LoraNetworkConfig":
        if self.dora_wd:
            # peft's DoRA keeps one magnitude per output row; A1111 reads dora_scale per input
            # column only (a per-row one broadcasts into a wrong weight, silently) and ComfyUI
            # applies a per-row one with the base weight's norm: no file both would read right.
            raise UserInputError("network.dora_wd: DoRA is trained through LyCORIS; set network.type = "
                                 "\"locon\" (a LoCon file holds the same LoRA keys plus dora_scale)", "cfg_dora_lora")
        for name in BLOCK_LISTS:
            values = getattr(self, name)
            lengths = sorted({getattr(layout, _LR_LENGTHS.get(name, "total")) for layout in LAYOUTS})
            if values is not None and len(values) not in lengths:
                raise UserInputError(f"network.{name}: {' or '.join(map(str, lengths))} values (one per block, "
                                     f"{' / '.join(layout.name for layout in LAYOUTS)}), got {len(values)}",
                                     "cfg_block_count", field=name, counts=" / ".join(map(str, lengths)),
                                     count=len(values))
        for dims, alphas in (("block_dims", "block_alphas"), ("conv_block_dims", "conv_block_alphas")):
            if getattr(self, alphas) is not None and getattr(self, dims) is None:
                raise UserInputError(f"network.{alphas} needs network.{dims} (the ranks they go with)",
                                     "cfg_block_alphas_alone", alphas=alphas, dims=dims)
            if any(d < 0 or d > 1024 for d in getattr(self, dims) or []):
                raise UserInputError(f"network.{dims}: ranks are between 0 and 1024", "cfg_block_dims_range",
                                     field=dims)
            if any(a <= 0 for a in getattr(self, alphas) or []):
                raise UserInputError(f"network.{alphas}: alphas are above 0", "cfg_block_alphas_range",
                                     field=alphas)
        return self

    def check_layout(self, layout: BlockLayout) -> None:
        """Every block list has ``layout``'s length (the family is known only with the UNet)."""
        for name in BLOCK_LISTS:
            values = getattr(self, name)
            want = getattr(layout, _LR_LENGTHS.get(name, "total"))
            if values is not None and len(values) != want:
                raise UserInputError(f"network.{name}: {layout.name} has {want} values here, got {len(values)}",
                                     "cfg_block_family", field=name, family=layout.name, want=want,
                                     count=len(values))

    def per_block(self, target, idx: int):
        """``target`` (engine.networks.lora.Target) with the rank and alpha of block ``idx``."""
        dims, alphas = ((self.conv_block_dims, self.conv_block_alphas) if target.conv
                        else (self.block_dims, self.block_alphas))
        if idx < 0 or dims is None:
            return target
        return replace(target, rank=dims[idx], alpha=alphas[idx] if alphas is not None else target.alpha)

    @field_validator("down_lr_weight", "mid_lr_weight", "up_lr_weight")
    @classmethod
    def _weights_in_range(cls, weights: Optional[list[float]]) -> Optional[list[float]]:
        if weights is not None and not all(0.0 <= w <= 100.0 for w in weights):
            raise UserInputError("block learning-rate weights are between 0 and 100", "cfg_block_weight")
        return weights

    def block_weight(self, idx: int, layout: BlockLayout = SD) -> float:
        """The learning-rate weight of block ``idx`` (1 outside the IN/MID/OUT blocks)."""
        return lr_weight(idx, layout, self.down_lr_weight, self.mid_lr_weight, self.up_lr_weight)

    def block_args(self) -> dict[str, str]:
        """The block settings that are set, as kohya writes them into ss_network_args."""
        return {name: ",".join(f"{w:g}" for w in getattr(self, name)) for name in BLOCK_LISTS
                if getattr(self, name) is not None}


class LoraNetworkFiles(TrainingMethod):
    """What LoRA and LyCORIS share: a kohya-keyed .safetensors with kohya's metadata."""
    counts_steps = True
    file_kinds: tuple[str, ...] = ("lora",)

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
    families = FAMILY_IDS  # (Flux.1: on its transformer, engine.networks.flux_lora)

    def attach(self, cfg, model, train_te, device):
        import torch
        from diffusers.training_utils import cast_training_params

        from engine.networks import lora

        if model.spec.denoiser == "flux":
            return self._attach_flux(cfg, model)
        net, tes = cfg.network, model.text_encoders
        # conv ranks per block train 3x3 convs even with conv_dim 0 (as kohya)
        targets = lora.unet_targets(model.unet, net.model_copy(update={"conv_dim": net.conv_dim or 1})
                                    if net.conv_block_dims and not net.conv_dim else net)
        layout = layout_for(lora.uses_sgm_names(model.unet))
        block_of = {t.name: block_index(lora.unet_file_name(model.unet, t.name), layout) for t in targets}
        if net.block_args():
            net.check_layout(layout)
            targets = [net.per_block(t, block_of[t.name]) for t in targets]
            # kohya: a block at rank 0 or learning-rate weight 0 has no LoRA
            targets = [t for t in targets if t.rank > 0 and net.block_weight(block_of[t.name], layout) > 0]
        unet_params = lora.inject_lora(model.unet, targets, net.dropout)
        te_params = [p for te in (tes if train_te else [])
                     for p in lora.inject_lora(te, lora.text_encoder_targets(te, net), net.dropout)]
        cast_training_params([model.unet, *tes], dtype=torch.float32)
        trained = {id(p) for p in unet_params + te_params}
        up = [p for m in (model.unet, *tes) for name, p in m.named_parameters()
              if ".lora_B." in name and id(p) in trained]
        scale = {}
        for name, p in model.unet.named_parameters():  # "<module path>.lora_A.<adapter>.weight"
            weight = net.block_weight(block_of.get(name.split(".lora_")[0], -1), layout) if id(p) in trained else 1.0
            if weight != 1.0:
                scale[id(p)] = weight
        return MethodParts(unet_params, te_params, up_params=up, lr_scale=scale)

    def _attach_flux(self, cfg, model):
        """The attention and MLP linears of the transformer's blocks; no per-block settings (they
        number a UNet's blocks), frozen text encoders."""
        import torch
        from diffusers.training_utils import cast_training_params

        from engine.networks import flux_lora, lora

        net = cfg.network
        if net.block_args():  # (a conv rank is left unused: the train log says so)
            raise UserInputError("network block settings (block_dims, down_lr_weight, ...) number a UNet's "
                                 "blocks (SD 1.x, 2.x, SDXL); Flux.1 has none: leave them empty",
                                 "cfg_flux_unet_options")
        transformer = model.unet.transformer
        params = lora.inject_lora(transformer, flux_lora.flux_targets(transformer, net.dim, net.alpha), net.dropout)
        cast_training_params([transformer], dtype=torch.float32)
        up = [p for name, p in transformer.named_parameters() if ".lora_B." in name and p.requires_grad]
        return MethodParts(params, [], up_params=up)

    def state_dict(self, s, accelerator):
        from engine.networks import flux_lora, lora

        if s.model.spec.denoiser == "flux":
            return flux_lora.kohya_flux_state_dict(accelerator.unwrap_model(s.model.unet).transformer)
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
        return "networks.lora", args | net.loraplus_args() | net.block_args()

    def swappers(self):
        from engine.generate.lora_apply import LoraSwapper

        return {"lora": LoraSwapper}
