"""Data parallelism with the libraries: accelerate's DDP, and torch's FSDP2 for sharding.

The same public names as ``helpers.distributed.naive``; what the library does for us:

- ``Accelerator().prepare(model)`` wraps the model in torch's ``DistributedDataParallel``, whose
  constructor broadcasts rank 0's weights and buffers, and whose backward all-reduces the
  gradients in buckets while backward still runs, then divides them by the world size (an
  average). So the correct loss for a micro-batch is its summed token loss x world size / N,
  with N the global target count (``accelerate.utils.reduce`` sums it over ranks).
- ``model.no_sync()`` skips the all-reduce for all but the last micro-batch of a window.
- ``fully_shard`` (FSDP2, ``torch.distributed.fsdp``) keeps 1/N of every parameter, gradient
  and optimizer state on each rank (ZeRO stage 3), gathering a layer's weights just in time.

Public API:

    broadcast_parameters(model, src=0)  shard(items, rank, world_size)   (as the naive twin)
    ddp_gradients(model, micro_batches, *, normalise="global") -> {name: grad}
    train(model, windows, *, optimizer) -> losses
    worker(rank, world_size, job) -> dict          under ``launch(..., init_group=False)``
    notebook_worker(job, out_dir)                  under ``accelerate.notebook_launcher``
    fsdp_worker(rank, world_size, job) -> dict     FSDP2 bytes per rank, under ``launch``
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from helpers.accumulation.naive import count_targets, token_loss_sum
from helpers.distributed.job import (
    Job,
    allocated_bytes,
    build_model,
    state_bytes,
    storage_bytes,
    to_device,
    trainable_state,
)
from helpers.distributed.naive import NORMALISATIONS, broadcast_parameters, shard


def make_accelerator(timeout_s: float = 120.0):
    """An Accelerator whose process group gives up after ``timeout_s`` (no hung CI)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    if not torch.cuda.is_available():  # one thread per process, said before accelerate warns
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A forked worker inherits the parent's accelerate state (a singleton, set by any
    # Accelerator the parent made, e.g. chapter 04's): start from a clean one.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    # Without a GPU, accelerate forms a multi-process (gloo) group only when told cpu=True.
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)


def _backward_window(model, micro_batches, normalise: str) -> torch.Tensor:
    """Backward over this rank's micro-batches; DDP all-reduces during the last one."""
    from accelerate.utils import reduce

    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    device = micro_batches[0]["input_ids"].device  # NCCL reduces GPU tensors only
    n_local = torch.tensor(count_targets(micro_batches), device=device)
    # DDP averages gradients (divides by N ranks): scale by the world size to get a sum
    world = dist.get_world_size()
    scale = world / reduce(n_local, "sum") if normalise == "global" else 1 / n_local
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else model.no_sync():
            loss_sum = token_loss_sum(model, batch)
            (loss_sum * scale).backward()
        total += loss_sum.detach()
    return total


def ddp_gradients(
    model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]], *, normalise="global"
) -> dict[str, torch.Tensor]:
    """As ``naive.ddp_gradients``, on a model prepared by accelerate (a DDP module).

    Returns:
        ``{parameter name: gradient}`` (names without DDP's ``module.`` prefix); cleared after.
    """
    model.zero_grad(set_to_none=True)
    _backward_window(model, micro_batches, normalise)
    grads = trainable_state(model.module, grads=True)
    model.zero_grad(set_to_none=True)
    return grads


def train(model: nn.Module, windows: Sequence[Sequence[dict]], *, optimizer) -> list[float]:
    """One optimizer step per window; returns each step's global loss (sum / N)."""
    from accelerate.utils import reduce

    losses = []
    for window in windows:
        optimizer.zero_grad(set_to_none=True)
        loss_sum = _backward_window(model, window, "global")
        optimizer.step()
        n = reduce(torch.tensor(count_targets(window), device=loss_sum.device), "sum")
        losses.append(float(reduce(loss_sum, "sum")) / float(n))
    return losses


def zero1_optimizer_bytes(model: nn.Module, lr: float) -> int:
    """ZeRO-1 with torch's ``ZeroRedundancyOptimizer``: each rank keeps AdamW state for its
    share of the trainable tensors (whole tensors, balanced by size). Takes one step with the
    gradients the model holds; returns the optimizer-state bytes this rank holds."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    params = [p for p in model.parameters() if p.requires_grad]
    zero = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=lr)
    zero.step()
    return state_bytes(model, zero.optim)["optimizer"]


def _run(job: Job) -> dict:
    """The accelerate twin of ``naive.worker`` (the Accelerator must not exist yet)."""
    accelerator = make_accelerator(job.timeout_s)
    rank, world = accelerator.process_index, accelerator.num_processes
    model = build_model(job, seed=job.seed + rank, device=accelerator.device)
    before = trainable_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.lr)
    model, optimizer = accelerator.prepare(model, optimizer)  # DDP broadcasts rank 0's weights
    start = trainable_state(model.module)
    local = to_device(shard(job.grad_window, rank, world), accelerator.device)
    result = {
        "rank": rank,
        "world_size": world,
        "distributed_type": str(accelerator.distributed_type),
        "backend": dist.get_backend(),
        "changed_by_broadcast": max(float((before[k] - start[k]).abs().max()) for k in start),
        "grads_global": ddp_gradients(model, local, normalise="global"),
        "grads_local": ddp_gradients(model, local, normalise="local"),
        "start": start,
    }
    windows = [to_device(shard(w, rank, world), accelerator.device) for w in job.train_windows]
    result["losses"] = train(model, windows, optimizer=optimizer)
    result["params"] = trainable_state(model.module)
    result["bytes"] = state_bytes(model.module, optimizer.optimizer)
    result["storage_bytes"] = storage_bytes(model.module, optimizer.optimizer)
    result["allocated"] = allocated_bytes(accelerator.device)  # None on a CPU
    result["zero1_optimizer_bytes"] = zero1_optimizer_bytes(model.module, job.lr)
    del model, optimizer  # DDP's reducer must go while the process group still exists
    dist.barrier()
    return result


def worker(rank: int, world_size: int, job: Job) -> dict:
    """``_run`` under ``launch(worker, N, (job,), init_group=False)`` (tests use this)."""
    result = _run(job)
    if (result["rank"], result["world_size"]) != (rank, world_size):
        raise RuntimeError(f"accelerate saw rank {result['rank']} of {result['world_size']}")
    return result


def notebook_worker(job: Job, out_dir: str) -> None:
    """``_run`` under ``accelerate.notebook_launcher``, which returns nothing: each rank
    saves its result as ``out_dir/rank{r}.pt`` (read back with ``torch.load(weights_only=True)``)."""
    torch.set_num_threads(1)
    result = _run(job)
    torch.save(result, Path(out_dir) / f"rank{result['rank']}.pt")
    dist.destroy_process_group()


def fsdp_worker(rank: int, world_size: int, job: Job) -> dict:
    """FSDP2 (ZeRO-3) on one rank: shard each decoder layer and the root with ``fully_shard``,
    take one optimizer step on the gradient window, count the bytes this rank holds.

    Returns:
        ``{"bytes": {weights, gradients, optimizer}, "grads": full gradients, "world_size"}``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    model = build_model(job, seed=job.seed + rank, device=device)
    broadcast_parameters(model)  # fully_shard keeps each rank's own slice: start equal
    mesh = init_device_mesh(device, (world_size,))
    for layer in model.model.layers:  # one all-gather per decoder layer, just in time
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.lr)
    local = to_device(shard(job.grad_window, rank, world_size), device)
    n_global = torch.tensor(count_targets(local), device=device)
    dist.all_reduce(n_global)
    for batch in local:  # FSDP2 averages gradients over ranks, as DDP does
        (token_loss_sum(model, batch) * world_size / n_global).backward()
    grads = trainable_state(model, grads=True)  # gathers the full gradients (all ranks call)
    optimizer.step()
    return {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "bytes": state_bytes(model, optimizer),
        "storage_bytes": storage_bytes(model, optimizer),
        "allocated": allocated_bytes(device),  # measured by CUDA's allocator; None on a CPU
        "grads": grads,
    }
