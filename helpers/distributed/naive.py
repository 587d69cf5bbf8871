"""Data parallelism by hand, with torch.distributed: what DDP does, in a few lines.

N processes each hold the whole model. Before training, rank 0's weights are broadcast so that
every rank starts equal. Each step, every rank runs forward and backward on its own shard of
the global window of micro-batches, the gradients are summed across ranks (``all_reduce``), and
every rank takes the same optimizer step, so the weights stay equal without being sent again.

The loss must be normalised the way chapter 04 taught, now across ranks too: each micro-batch
divides its *summed* token loss by N, the number of target tokens in the whole global window,
counted on every rank and summed with an ``all_reduce``. Then the summed gradients are exactly
the single-process full-batch gradient. The usual shortcut, each rank's own mean averaged over
ranks (what plain DDP with ``loss = model(**batch).loss`` computes), is the 2024 accumulation
bug again, across GPUs.

Public API (the same names as ``helpers.distributed.library``):

    broadcast_parameters(model, src=0)     every rank gets rank src's weights and buffers
    shard(items, rank, world_size)         rank r's part: items r, r + N, r + 2N, ...
    ddp_gradients(model, micro_batches, *, normalise="global") -> {name: grad}
    train(model, windows, *, optimizer) -> losses
    worker(rank, world_size, job) -> dict  the chapter's run (``launch(worker, 2, (job,))``)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from helpers.accumulation.naive import count_targets, token_loss_sum
from helpers.checks import whole_number
from helpers.distributed.job import (
    Job,
    allocated_bytes,
    build_model,
    state_bytes,
    storage_bytes,
    to_device,
    trainable_state,
)

NORMALISATIONS = ("global", "local")


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s (in place, all ranks)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=src)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """This rank's part of a global list: items rank, rank + N, ... (as DistributedSampler)."""
    whole_number(world_size, "world_size")  # 0 used to leave every rank "outside 0..-1"
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank!r} outside 0..{world_size - 1}")
    return list(items[rank::world_size])


def global_count(micro_batches: Sequence[dict[str, torch.Tensor]]) -> int:
    """Target tokens in the global window: this rank's count, summed over ranks."""
    device = micro_batches[0]["input_ids"].device  # NCCL reduces GPU tensors only
    n = torch.tensor(count_targets(micro_batches), dtype=torch.int64, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.SUM)
    return int(n)


def _backward_window(model, micro_batches, normalise: str) -> torch.Tensor:
    """Backward over this rank's micro-batches; returns the summed token loss (a scalar)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    # global: N over all ranks (correct); local: this rank's own count (the bug)
    n = global_count(micro_batches) if normalise == "global" else count_targets(micro_batches)
    total = torch.zeros((), device=micro_batches[0]["input_ids"].device)
    for batch in micro_batches:
        loss_sum = token_loss_sum(model, batch)
        (loss_sum / n).backward()  # gradients add up in p.grad
        total += loss_sum.detach()
    return total


def _all_reduce_gradients(model: nn.Module, normalise: str) -> None:
    """Sum each gradient over ranks; the "local" shortcut then averages (divides by N)."""
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            if normalise == "local":
                p.grad /= world


def ddp_gradients(
    model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]], *, normalise="global"
) -> dict[str, torch.Tensor]:
    """This rank's micro-batches forward and backward, then the gradients all-reduced.

    Args:
        micro_batches: this rank's shard of the global window.
        normalise: "global" divides by the all-reduced target count (correct); "local" by
            this rank's count, then averages over ranks (the shortcut, for the lesson).
    Returns:
        ``{parameter name: gradient}`` (copies, identical on every rank); grads are cleared.
    """
    model.zero_grad(set_to_none=True)
    _backward_window(model, micro_batches, normalise)
    _all_reduce_gradients(model, normalise)
    grads = trainable_state(model, grads=True)
    model.zero_grad(set_to_none=True)
    return grads


def train(
    model: nn.Module, windows: Sequence[Sequence[dict]], *, optimizer: torch.optim.Optimizer
) -> list[float]:
    """One optimizer step per window (this rank's shard of it), gradients all-reduced.

    Returns:
        Each step's global window loss: summed token losses over all ranks / N.
    """
    losses = []
    for window in windows:
        optimizer.zero_grad(set_to_none=True)
        loss_sum = _backward_window(model, window, "global")
        _all_reduce_gradients(model, "global")
        optimizer.step()
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
        losses.append(float(loss_sum) / global_count(window))
    return losses


def worker(rank: int, world_size: int, job: Job) -> dict:
    """The chapter's naive run on one rank: broadcast, gradients both ways, K steps, bytes."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # launch set this rank's GPU
    model = build_model(job, seed=job.seed + rank, device=device)  # different adapters...
    before = trainable_state(model)
    broadcast_parameters(model)  # ...until rank 0's are broadcast
    start = trainable_state(model)
    local = to_device(shard(job.grad_window, rank, world_size), device)
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "changed_by_broadcast": max(float((before[k] - start[k]).abs().max()) for k in start),
        "grads_global": ddp_gradients(model, local, normalise="global"),
        "grads_local": ddp_gradients(model, local, normalise="local"),
        "start": start,
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.lr)
    windows = [to_device(shard(w, rank, world_size), device) for w in job.train_windows]
    result["losses"] = train(model, windows, optimizer=optimizer)
    result["params"] = trainable_state(model)
    result["bytes"] = state_bytes(model, optimizer)  # after a step: every state exists
    result["storage_bytes"] = storage_bytes(model, optimizer)
    result["allocated"] = allocated_bytes(device)  # measured by CUDA's allocator; None on a CPU
    return result
