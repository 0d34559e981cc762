"""DreamBooth-style full fine-tune: every UNet weight (and optionally the text encoder's) learns;
saved as a single-file checkpoint in the original layout (and a diffusers folder)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.config.base import Section
from engine.methods.base import MethodParts, TrainingMethod


class FullFinetuneConfig(Section):
    """DreamBooth-style full fine-tune: every UNet weight (and optionally the text encoder's)."""
    type: Literal["dreambooth"] = "dreambooth"
    train_text_encoder: bool = False
    save_diffusers: bool = Field(default=True, description="Also write a diffusers folder.")


class FullFinetuneMethod(TrainingMethod):
    type = "dreambooth"
    config = FullFinetuneConfig
    keeps_base_half = False  # every weight learns, kept in fp32 (autocast does the half math)
    usage = "checkpoint"
    civitai_type = "Checkpoint"
    file_kinds = ("checkpoint",)
    usual_lr = (1e-7, 5e-5)

    def trains_text_encoder(self, net) -> bool:
        return net.train_text_encoder

    def attach(self, cfg, model, train_te, device):
        tes = model.text_encoders if train_te else []
        return MethodParts(list(model.unet.requires_grad_(True).parameters()),
                           [p for te in tes for p in te.requires_grad_(True).parameters()])

    def save(self, cfg, s, accelerator, path, epoch, step, final):
        from engine.export.checkpoint import checkpoint_metadata, save_checkpoint_file, save_diffusers_folder

        unet = accelerator.unwrap_model(s.model.unet)
        tes = [accelerator.unwrap_model(te) for te in s.model.text_encoders]
        meta = checkpoint_metadata(cfg, s.model.family, s.model.prediction_type, epoch, step,
                                   s.run.validation_loss)
        if final and cfg.network.save_diffusers:
            save_diffusers_folder(s.model, unet, tes, path.with_suffix(""))
        return save_checkpoint_file(s.model, unet, tes, path, meta, cfg.output.save_precision)

    def output_bytes(self, cfg, s) -> int:
        from engine.training.guards import bytes_needed

        modules = (s.model.unet, *s.model.text_encoders, s.model.vae)  # the file and a folder
        return 2 * bytes_needed([p for m in modules for p in m.parameters()],
                                4 if cfg.output.save_precision == "fp32" else 2)
