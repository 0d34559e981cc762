"""Data-parallel training on several processes (``accelerate launch --num_processes N``).

Every process holds the whole model and trains on its slice of each global batch; after the
backward pass the gradients of the trained tensors are averaged across processes, which is what
DistributedDataParallel does. We average them ourselves instead of wrapping modules in DDP because
LyCORIS, hypernetwork and embedding tensors live outside the UNet / text encoder modules (DDP would
never see their gradients) and because DDP's hooks only fire when the wrapped module's own forward
runs, which is not how every method calls its networks.

The batch sampler cuts global batches of ``batch_size x N`` (``train_batch_size`` stays per
process, as in kohya's scripts) and each process draws the noise and timesteps of the whole global
batch from the same seeded stream and keeps its rows, so N processes with batch b train exactly the
way one process with batch b x N does, up to float summation order.
"""
from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader

_BUCKET_ELEMENTS = 32 * 1024 * 1024  # values per all-reduce call: bounds the flat buffer's memory


def prepare_for_training(accelerator: Accelerator, models: list[torch.nn.Module],
                         optimizer, loader, scheduler):
    """accelerate's prepare(), minus the two things that would break our data-parallel scheme
    when N > 1: DDP wrapping (see the module doc) and a second sharding of the loader, whose batch
    sampler already yields this process's rows. With one process it is exactly ``prepare``."""
    if accelerator.num_processes == 1:
        out = accelerator.prepare(*models, optimizer, loader, scheduler)
        return list(out[:len(models)]), *out[len(models):]
    models = [accelerator.prepare_model(m, evaluation_mode=True) for m in models]
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    # a DataLoaderShard that does not shard (1 process): it still tells accelerate where an epoch
    # ends, which gradient accumulation needs
    loader = prepare_data_loader(loader, device=accelerator.device, num_processes=1, process_index=0,
                                 put_on_device=True, even_batches=False)
    return models, optimizer, loader, scheduler


def average_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Mean of each trained tensor's gradient over all processes (no-op with one process).
    A tensor without a gradient on this process counts as zeros, so every process sends the same
    buffer layout (mismatched layouts would hang the all-reduce)."""
    n = accelerator.num_processes
    if n == 1:
        return
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        bucket, size = [], 0
        for p in group + [None]:
            if p is not None:
                bucket.append(p)
                size += p.grad.numel()
            if bucket and (p is None or size >= _BUCKET_ELEMENTS):
                _all_reduce_mean([q.grad for q in bucket], n)
                bucket, size = [], 0


def _all_reduce_mean(grads: list[torch.Tensor], n: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(n)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_processes(accelerator: Accelerator, value: torch.Tensor) -> float:
    """The loss every process reports: the global batch's mean (all processes see the same number,
    so they all stop together on a NaN instead of one waiting forever for the others)."""
    if accelerator.num_processes == 1:
        return value.item()
    v = value.detach().float().reshape(1).clone()
    torch.distributed.all_reduce(v)
    return (v / accelerator.num_processes).item()


def check_processes_agree(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> str | None:
    """After training on N > 1 processes: every process must hold the same trained tensors (they
    start equal and apply equal averaged updates). Compares a float64 fingerprint across processes
    and raises if they drifted apart; returns a line for the log (None with one process)."""
    n = accelerator.num_processes
    if n == 1:
        return None
    fp = torch.zeros(2, dtype=torch.float64)
    for i, p in enumerate(params):
        v = p.detach().to("cpu", torch.float64).reshape(-1)
        fp[0] += v.sum()
        fp[1] += (v * (1 + (i % 7))).abs().sum()
    fp = fp.to(accelerator.device)  # NCCL gathers CUDA tensors only
    everyone = [torch.zeros_like(fp) for _ in range(n)]
    torch.distributed.all_gather(everyone, fp)
    everyone = [e.cpu() for e in everyone]
    if any(not torch.equal(e, everyone[0]) for e in everyone[1:]):
        raise RuntimeError("the training processes ended with different weights (fingerprints "
                           f"{[e.tolist() for e in everyone]}); the saved file comes from process 0")
    return f"{n} processes: trained weights identical on every process (fingerprint {everyone[0][0].item():.6g})"
