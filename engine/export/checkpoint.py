"""Save a full fine-tune (DreamBooth-style) result: one original-layout single file that A1111 and
ComfyUI load, and optionally a diffusers folder for diffusers users."""
from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from engine.config.job import JobConfig
from engine.export.metadata import modelspec_architecture, noise_and_loss_metadata, run_metadata
from engine.models.loader import LoadedModel
from engine.models.single_file import save_single_file


def checkpoint_metadata(cfg: JobConfig, family: str, prediction_type: str, epoch: int,
                        step: int, validation_loss: float | None = None) -> dict[str, str]:
    res = cfg.dataset.resolution
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": modelspec_architecture(family, prediction_type),
        "modelspec.implementation": "diffusers",
        "modelspec.title": cfg.output.name,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modelspec.prediction_type": prediction_type,
        "modelspec.trigger_phrase": cfg.output.trigger_phrase,
        "modelspec.author": cfg.output.author,
        "modelspec.description": cfg.output.description,
        "ss_output_name": cfg.output.name,
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_seed": str(cfg.training.seed),
        "ss_learning_rate": str(cfg.optimizer.lr),
        **noise_and_loss_metadata(cfg.training),
        **run_metadata(cfg.training, validation_loss),
    }


def save_checkpoint_file(model: LoadedModel, unet, text_encoders: list, path: Path,
                         metadata: dict[str, str], precision: str) -> Path:
    parts = {"unet": unet, "vae": model.vae, "text_encoder": text_encoders[0],
             "text_encoder_2": text_encoders[1] if len(text_encoders) > 1 else None}
    return save_single_file(parts, path, half=precision == "fp16", metadata=metadata,
                            noise_schedule=model.noise_scheduler.config)


def save_diffusers_folder(model: LoadedModel, unet, text_encoders: list, folder: Path) -> Path:
    """Write the pipeline to a temp folder beside ``folder`` and swap it in, so a crash never
    leaves a half-written model where a good one was."""
    import diffusers

    from engine.generate.sampler import pipeline_of

    folder = Path(folder)
    scheduler = getattr(diffusers, model.spec.folder_scheduler).from_config(model.noise_scheduler.config)
    pipe = pipeline_of(model, unet, text_encoders, scheduler)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
