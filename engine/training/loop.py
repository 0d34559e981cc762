"""The training loop: one readable function on accelerate.

noise -> random timestep -> UNet predicts noise (or v) -> weighted MSE -> LoRA-only update.
Callbacks report progress; a StopToken polled between steps stops the run cleanly and still
saves what was learned.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import parse_flag_from_env, set_seed

from engine.config.job import JOB_SUFFIX, JobConfig, save_config
from engine.data.captions import process_caption
from engine.data.shards import Shard
from engine.fileio import remove_stale_temps
from engine.models.loader import LoadedModel
from engine.training.callbacks import CallbackList, Callbacks, StepInfo, StopToken, TrainResult
from engine.training.conditioning import unet_conditioning
from engine.training.curves import CurveWriter
from engine.training.distributed import (
    average_gradients,
    check_processes_agree,
    mean_over_processes,
    prepare_for_training,
)
from engine.training.ema import averaged, restore_ema
from engine.training.guards import bytes_needed, check_finite, check_loss, guarded_save
from engine.training.losses import (
    diffusion_loss,
    latent_mask,
    offset_noise,
    pyramid_noise,
)
from engine.training.samples import sample_during_training, should_sample
from engine.training.setup import SetupError, TrainingSetup, build_training, encode_latents, resolve_mixed_precision
from engine.training.state import (
    Position,
    StateError,
    TrainState,
    find_latest,
    job_fingerprint,
    load_newest_good,
    load_state,
    restore,
    restore_torch_rng,
    save_state,
    state_root,
)
from engine.training.tb_log import TensorBoardLogger, TensorBoardUnavailable, run_log_dir
from engine.training.validation import validation_loss


def epoch_file_name(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}.safetensors"


def final_file_name(name: str, step: int, stopped: bool) -> str:
    """``name.safetensors`` for a finished run; a run stopped early is named for what it is
    (``name-stopped-step000061``), so it is never taken for, or overwrites, a finished result."""
    return f"{name}-stopped-step{step:06d}.safetensors" if stopped else f"{name}.safetensors"


def save_output(cfg: JobConfig, s: TrainingSetup, accelerator: Accelerator, path: Path,
                epoch: int, step: int, final: bool = False) -> Path:
    """The method's file(s) (engine.methods): LoRA/LyCORIS .safetensors, TI embedding files, a
    hypernetwork .pt, or for a full fine-tune a single-file checkpoint (+ diffusers folder); with
    training.ema, of the weights' moving average."""
    with averaged(s.ema, s.trainable):
        return s.method.save(cfg, s, accelerator, path, epoch, step, final)


def epoch_batches(loader, after_start=None):
    """The loader's batches; ``after_start()`` runs once its iterator has been created (and
    drew its per-epoch seed), before the first batch is trained, or at once for an empty epoch."""
    iterator = iter(loader)
    try:
        first = next(iterator)
    except StopIteration:
        if after_start:
            after_start()
        return
    if after_start:
        after_start()
    yield first
    yield from iterator


def _find_resume_state(cfg: JobConfig, resume: Path | str | None) -> TrainState | None:
    """The state to continue from, loaded: ``resume`` is "auto" (this job's state folder), a
    state folder, or one saved state. Damaged newer states are passed over (and logged by the
    caller from ``TrainState.passed_over``); none usable is a StateError."""
    if resume is None:
        return None
    fingerprint = job_fingerprint(cfg)
    if str(resume) == "auto":
        if find_latest(state_root(cfg)) is None:
            raise StateError(f"no saved training state in {state_root(cfg)} to resume from (set "
                             "output.save_state or output.save_state_every_n_steps to save one)",
                             "state_none", path=state_root(cfg))
        root = state_root(cfg)
    else:
        path = Path(resume)
        if not path.is_dir():
            raise StateError(f"training state not found: {path}", "state_not_found", path=path)
        if not ((path / "latest").is_file() or any(path.glob("step-*"))):  # one state, not a folder of them
            return load_state(path, fingerprint)
        root = path
    state, passed = load_newest_good(root, fingerprint)
    state.passed_over = passed
    return state


def tensorboard_logger(cfg: JobConfig) -> TensorBoardLogger | None:
    if cfg.output.log_with != "tensorboard":
        return None
    logging_dir = Path(cfg.output.logging_dir or Path(cfg.output.dir) / "logs")
    try:
        return TensorBoardLogger(run_log_dir(logging_dir, cfg.output.name))
    except TensorBoardUnavailable as err:
        raise SetupError.wrapping(err) from None


def train(cfg: JobConfig, callbacks: Callbacks | None = None, stop: StopToken | None = None,
          model: LoadedModel | None = None, resume: Path | str | None = None) -> TrainResult:
    """Run the job. ``resume``: a state folder, or "auto" for the newest state of this job."""
    stop = stop or StopToken()
    state = _find_resume_state(cfg, resume)  # before any work: a bad --resume fails at once
    t = cfg.training
    # accelerate keeps its state in a process-wide singleton; a long-running app trains many jobs
    # (with different precisions) in one process, so start each job from a clean state. The
    # distributed (partial) state is kept, so multi-process runs are unaffected.
    AcceleratorState._reset_state(reset_partial_state=False)
    # (the same cpu flag accelerate's own state would read, so the shared state it creates agrees)
    main = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).is_main_process
    curves = CurveWriter(Path(cfg.output.dir), cfg.output.name, plot_every=25, min_seconds=20) if main else None
    # with several processes only the first reports, plots and writes files
    cb = CallbackList(curves, tensorboard_logger(cfg), callbacks) if main else CallbackList()
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(t.mixed_precision, cb),
                              gradient_accumulation_steps=t.gradient_accumulation_steps)
    set_seed(t.seed)
    if accelerator.device.type == "cuda" and main:
        from engine.system.vram import log_line

        cb.on_log(log_line(cfg, accelerator.device))
    with accelerator.main_process_first():  # the others then reuse its disk latent cache
        s = build_training(cfg, accelerator, cb, model)
    tes = s.model.text_encoders  # SDXL has two
    models, optimizer, loader, scheduler = prepare_for_training(
        accelerator, [s.model.unet, *tes] if s.train_te else [s.model.unet], s.optimizer, s.loader,
        s.scheduler)
    unet, tes = models[0], (models[1:] if s.train_te else tes)
    objective = s.objective
    caption_rng = random.Random(t.seed)
    out_dir = Path(cfg.output.dir)
    if accelerator.is_main_process:
        for stale in remove_stale_temps(out_dir, cfg.output.name):  # left by a run killed mid-save
            cb.on_log(f"removed a half-written file of an interrupted run: {stale.name}")
        # the job beside its outputs: model cards and "train again" read it
        save_config(cfg, out_dir / f"{cfg.output.name}{JOB_SUFFIX}")
    result = TrainResult(final_path=None)

    def take_samples(epoch: int, step: int) -> None:
        if s.network is not None:
            s.network.eval()  # no dropout while sampling
        with averaged(s.ema, s.trainable):
            paths = sample_during_training(cfg, s.model, accelerator.unwrap_model(unet),
                                           [accelerator.unwrap_model(te) for te in tes], epoch, step,
                                           accelerator.autocast)
        if s.network is not None:
            s.network.train()
        cb.on_sample(paths, epoch, step)

    def last_good() -> Path | None:
        return result.saved[-1] if result.saved else None

    def training_mode(on: bool) -> None:
        """Training mode for what trains (a frozen text encoder stays in eval), or eval for all."""
        unet.train(on)
        for te in tes:
            te.train(on and s.train_te)
        if s.network is not None:
            s.network.train(on)

    def validate(epoch: int, step: int) -> None:
        """The held-out images' loss of the weights as they are now (every process computes the
        same number; the first reports it and writes it into the next saved file)."""
        if s.validation is None or (result.validation and result.validation[-1][0] == step):
            return
        training_mode(False)
        with averaged(s.ema, s.trainable):
            loss = validation_loss(s.validation, s, cfg, unet, tes, accelerator.device, accelerator.autocast)
        training_mode(True)
        result.validation.append((step, epoch, loss))
        s.run.validation_loss = loss
        cb.on_validation(step, epoch, loss)

    sampler = s.loader.batch_sampler
    fingerprint = job_fingerprint(cfg)
    step, start_epoch = 0, 1
    if state is not None:
        for err in state.passed_over:
            cb.on_log(f"skipped a damaged training state: {err}")
        restore(state, s.trainable, optimizer, scheduler, caption_rng)
        if s.ema is not None:
            if state.ema is None:
                raise StateError(f"{state.path} holds no moving average (training.ema)", "state_mismatch",
                                 path=state.path)
            restore_ema(s.ema, state.ema, accelerator.device)
        pos = state.position
        sampler.resume(pos.sampler_state, pos.skip_batches)
        step, start_epoch, result.losses = pos.step, pos.epoch, list(state.losses)
        cb.on_log(f"resumed from {state.path} (step {step}, epoch {start_epoch}, "
                  f"{pos.skip_batches} batches of it done)")
        cb.on_resume(step, list(state.losses))
        if curves is not None:  # (only the first process writes curves)
            curves.resume_step = step
    cb.on_start(s.total_steps)
    if state is None:
        validate(0, 0)  # the base's own: where the curve starts

    def checkpoint_state(epoch: int, batches_done: int, epoch_finished: bool) -> None:
        """Save the resumable state. Mid-epoch (also after its last batch, so a resumed run still
        does the epoch's end-of-epoch saves): the epoch's start + batches done; after the
        end-of-epoch work: the next epoch, fresh."""
        if epoch_finished:
            pos = Position(step, epoch + 1, 0, sampler.generator.get_state())
        else:
            pos = Position(step, epoch, batches_done, sampler.epoch_start_state)
        check_finite(s.trainable, "the training state", step, epoch, last_good())
        path = guarded_save(
            lambda: save_state(state_root(cfg), fingerprint, pos, s.trainable, optimizer, scheduler,
                               caption_rng, result.losses, keep=cfg.output.keep_states,
                               pause_for_tests=float(os.environ.get("LORAFORGE_TEST_STATE_PAUSE", 0)),
                               ema=s.ema.state_dict() if s.ema is not None else None),
            out_dir, bytes_needed(s.trainable, 12), "the training state")  # fp32 values + 2 Adam moments
        cb.on_log(f"training state saved: {path}")

    epoch = start_epoch - 1
    for epoch in range(start_epoch, t.epochs + 1):
        if step >= s.total_steps:
            break
        training_mode(True)
        epoch_losses, accum = [], []
        batches_done = sampler.pending_skip
        resuming = state is not None and epoch == start_epoch
        # A state saved mid-epoch was saved after that epoch's data iterator drew its seed: put the
        # RNG back once the resumed epoch's iterator exists. One saved at an epoch's end comes
        # before the next epoch's iterator, so it goes back before that iterator is created.
        at_epoch_start = resuming and state.position.skip_batches == 0
        if at_epoch_start:
            restore_torch_rng(state)
        after_start = (lambda: restore_torch_rng(state)) if resuming and not at_epoch_start else None
        for batch in epoch_batches(loader, after_start):
            batches_done += 1
            with accelerator.accumulate(unet, *tes) if s.train_te else accelerator.accumulate(unet):
                latents = (batch["latents"].to(accelerator.device) if "latents" in batch
                           else encode_latents(s.model, batch["pixels"]))
                latents = latents.to(s.weight_dtype)
                # noise and timesteps for the whole global batch, this process's rows of them
                # (every process trains the same number of rows: the sampler pads short batches)
                shard = Shard.of_process(latents.shape[0], accelerator.process_index,
                                         accelerator.num_processes)
                whole = (latents if shard.total == latents.shape[0]
                         else latents.new_empty((shard.total, *latents.shape[1:])))
                noise = offset_noise(whole, t.noise_offset)
                if t.multires_noise_iterations:
                    noise = pyramid_noise(noise, t.multires_noise_iterations, t.multires_noise_discount)
                noise = shard.rows(noise)
                timesteps = shard.rows(objective.timesteps(shard.total, whole))
                extra = shard.rows(torch.randn_like(whole)) if t.ip_noise_gamma else None
                noisy = objective.noisy(latents, noise, timesteps, t.ip_noise_gamma, extra)
                captions = [process_caption(c, caption_rng, cfg.dataset.shuffle_caption,
                                            cfg.dataset.keep_tokens, cfg.dataset.caption_dropout_rate,
                                            cfg.dataset.tag_dropout_rate)
                            for c in batch["captions"]]
                captions = [s.method.prompt(s, c, caption_rng) for c in captions]
                hidden, added = unet_conditioning(s.model, tes, captions, batch, t.clip_skip, s.train_te,
                                                  s.te_cache, latents.device, s.weight_dtype)

                def encode(prompts: list[str], batch=batch, device=latents.device) -> torch.Tensor:
                    """Other prompts conditioned as this batch (DreamArtist's negative word)."""
                    return unet_conditioning(s.model, tes, prompts, batch, t.clip_skip, True, None, device,
                                             s.weight_dtype)[0]

                pred = s.method.predict(s, cfg, unet, noisy, timesteps, hidden, added, encode)
                target = objective.target(latents, noise, timesteps)
                weights = batch["loss_weights"].to(latents.device)  # prior_loss_weight on reg images
                snr = objective.weights(timesteps, t.min_snr_gamma, t.debiased_estimation_loss)
                if snr is not None:
                    weights = weights * snr
                threshold = (objective.huber(timesteps, t.huber_schedule, t.huber_c, t.huber_scale)
                             if t.loss_type in ("huber", "smooth_l1") else None)
                mask = latent_mask(batch["masks"], latents) if "masks" in batch else None
                loss = diffusion_loss(pred, target, weights, t.loss_type, threshold, mask)
                loss_value = mean_over_processes(accelerator, loss)
                check_loss(loss_value, step + 1, epoch, last_good(), t.mixed_precision)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    average_gradients(accelerator, s.trainable)
                if accelerator.sync_gradients and cfg.optimizer.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(s.trainable, cfg.optimizer.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    s.method.after_optimizer_step(s)
                    if s.ema is not None:
                        s.ema.step(s.trainable)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            accum.append(loss_value)
            if accelerator.sync_gradients:
                step += 1
                step_loss = sum(accum) / len(accum)
                accum.clear()
                epoch_losses.append(step_loss)
                result.losses.append(step_loss)
                cb.on_step(StepInfo(step, s.total_steps, epoch, step_loss, scheduler.get_last_lr()[0]))
                if t.validate_every_n_steps and step % t.validate_every_n_steps == 0:
                    validate(epoch, step)
                if should_sample(cfg, step=step) and accelerator.is_main_process:
                    take_samples(epoch, step)
                n_state = cfg.output.save_state_every_n_steps
                stopping = step >= s.total_steps or stop.stopped
                if accelerator.is_main_process and (
                        (n_state and step % n_state == 0 and not stopping)
                        or (stop.stopped and cfg.output.save_state)):
                    checkpoint_state(epoch, batches_done, False)
                if stopping:
                    break
        cb.on_epoch_end(epoch, sum(epoch_losses) / max(len(epoch_losses), 1))
        result.epochs_done = epoch
        finished = step >= s.total_steps or stop.stopped or epoch == t.epochs
        n = cfg.output.save_every_n_epochs
        saving = not finished and n and epoch % n == 0
        if saving or finished or (t.validate_every_n_epochs and epoch % t.validate_every_n_epochs == 0):
            validate(epoch, step)  # before the save: each file carries its own validation loss
        if saving and accelerator.is_main_process:
            check_finite(s.trainable, f"the epoch {epoch} file", step, epoch, last_good())
            path = guarded_save(lambda: save_output(cfg, s, accelerator, out_dir / epoch_file_name(
                cfg.output.name, epoch), epoch, step), out_dir, s.method.output_bytes(cfg, s), f"epoch {epoch}")
            result.saved.append(path)
            cb.on_saved(path, epoch, step)
            if cfg.output.save_state:
                checkpoint_state(epoch, batches_done, True)
        if should_sample(cfg, epoch=epoch) and accelerator.is_main_process:
            take_samples(epoch, step)
        if finished:
            break

    result.steps, result.stopped_early = step, stop.stopped
    if s.network is not None:  # a caller's model keeps the network: leave it as at inference
        s.network.eval()
    accelerator.wait_for_everyone()
    agreed = check_processes_agree(accelerator, s.trainable)
    if agreed:
        cb.on_log(agreed)
    if accelerator.is_main_process:
        check_finite(s.trainable, "the final file", step, epoch, last_good())
        final_name = final_file_name(cfg.output.name, step, stop.stopped)
        final = guarded_save(lambda: save_output(cfg, s, accelerator, out_dir / final_name, epoch, step,
                                                 final=True),
                             out_dir, s.method.output_bytes(cfg, s), "the final file")
        result.final_path = final
        result.saved.append(final)
        cb.on_saved(final, epoch, step)
    accelerator.end_training()
    cb.on_end(result)
    return result
