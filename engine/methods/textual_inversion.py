"""Textual Inversion: new word(s) in the text encoder's embedding table learn; the model is
untouched. DreamArtist (APT) learns a positive and a negative word with guidance in the step."""
from __future__ import annotations

import builtins
from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator

from engine.config.base import Section
from engine.config.lr_schedule import LrScheduleError, parse_lr_schedule
from engine.i18n import UserInputError
from engine.methods.base import MethodParts, TrainingMethod

TEMPLATE_NAMES = ("subject", "style", "subject_filewords", "style_filewords", "filewords")
MAX_NORM = 3.0  # x the vocabulary's mean norm; measured on the demo, see TextualInversionConfig


def check_lr_schedule(text: Optional[str]) -> Optional[str]:
    """A1111 schedule syntax, checked while validating (a keyed ValueError for pydantic)."""
    if text is not None:
        try:
            parse_lr_schedule(text)
        except LrScheduleError:
            raise  # a ValueError: pydantic reports it, keeping its catalogue key
    return text


class TextualInversionConfig(Section):
    """Learn new token embedding(s) only; the model is untouched."""
    type: Literal["textual_inversion"] = "textual_inversion"
    token: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                       description="The new word (a made-up one, e.g. 'zkzstar').")
    init_text: str = Field(default="*", description="Start from these words' embeddings.")
    num_vectors: int = Field(default=1, ge=1, le=75)
    template: Literal[TEMPLATE_NAMES] = "subject"  # type: ignore[valid-type]
    custom_templates: list[str] = Field(default_factory=list,
                                        description="Own templates with [name] and/or [filewords].")
    lr_schedule: Optional[str] = Field(default=None, description="A1111 syntax, e.g. "
                                       "'0.005:100, 1e-3:1000, 1e-5' (overrides optimizer.lr).")
    max_norm: Optional[float] = Field(
        default=MAX_NORM, ge=0.5, le=50.0,
        description="Longest a learned vector may grow, in multiples of a normal word's length "
                    "(unbounded vectors grow ~7x and the model draws blank images); empty: no limit.")

    _schedule_parses = field_validator("lr_schedule")(check_lr_schedule)

    @field_validator("custom_templates")
    @classmethod
    def _templates_have_slots(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if "[name]" not in line:
                raise UserInputError(f"template {line!r} has no [name]", "cfg_template_name", line=line)
        return lines


class DreamArtistConfig(TextualInversionConfig):
    """DreamArtist (APT): a positive embedding ``<token>`` and a negative one ``<token>-neg``
    learned together, with classifier-free guidance inside the training step. Use the first in
    the prompt and the second in the negative prompt."""
    type: Literal["dreamartist"] = "dreamartist"  # type: ignore[assignment]
    negative_init_text: str = Field(default="*", description="Start the negative embedding here.")
    negative_num_vectors: int = Field(default=1, ge=1, le=75)
    cfg_scale: float = Field(default=3.0, ge=1.0, le=30.0,
                             description="Guidance scale used while training (APT's 'CFG').")


class TextualInversionMethod(TrainingMethod):
    type = "textual_inversion"
    config: ClassVar[builtins.type[Section]] = TextualInversionConfig
    keeps_base_half = False  # the embedding table learns inside the text encoder
    usage = "embedding"
    civitai_type = "TextualInversion"
    file_kinds = ("embedding",)
    usual_lr = (1e-4, 1e-2)
    no_weight_decay = True
    placeholder = {"token": "placeholder"}

    def trains_text_encoder(self, net) -> bool:
        return True  # its output changes as the new rows learn

    def negative(self, net) -> tuple[int, str] | None:
        return None

    def attach(self, cfg, model, train_te, device):
        from engine.networks.textual_inversion import TextualInversion

        net = cfg.network
        ti = TextualInversion(model, net.token, net.num_vectors, net.init_text, net.template,
                              net.custom_templates, negative=self.negative(net), max_norm=net.max_norm)
        for te in model.text_encoders:
            te.to(device)  # the resized embedding tables
        return MethodParts([], [p.requires_grad_(True) for p in ti.parameters], state=ti)

    def prompt(self, s, caption, rng):
        return s.state.prompt(caption, rng)

    def after_optimizer_step(self, s) -> None:
        s.state.restore_frozen_rows()  # only our rows of the table learn

    def save(self, cfg, s, accelerator, path, epoch, step, final):
        from engine.export.metadata import run_metadata
        from engine.models.families import modelspec_architecture

        arch = modelspec_architecture(s.model.family, s.model.prediction_type)
        meta = {"modelspec.architecture": f"{arch}/textual-inversion", "modelspec.title": cfg.output.name,
                "ss_output_name": cfg.output.name, "ss_epoch": str(epoch), "ss_steps": str(step),
                **run_metadata(cfg.training, s.run.validation_loss)}
        return s.state.save(path, cfg.output.name, step, s.run.base_model_hash, s.run.base_model_name,
                         cfg.output.save_precision, meta)[0]

    def swappers(self):
        from engine.generate.embedding_apply import EmbeddingSwapper

        return {"embedding": EmbeddingSwapper}


class DreamArtistMethod(TextualInversionMethod):
    type = "dreamartist"
    config = DreamArtistConfig
    families = ("sd15", "sd2")  # guidance with SDXL's pooled/size conditioning is not built

    def negative(self, net):
        return net.negative_num_vectors, net.negative_init_text

    def predict(self, s, cfg, unet, noisy, timesteps, hidden, added, encode):
        import torch

        from engine.training.losses import guided

        neg = encode([s.state.negative_prompt()] * noisy.shape[0])
        cond, uncond = unet(torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                            torch.cat([hidden, neg])).sample.chunk(2)
        return guided(cond, uncond, cfg.network.cfg_scale)

    def swappers(self):
        return {}  # its files are embeddings: Textual Inversion's swapper reads them
