"""A few training steps under torch's ``fully_shard``, with or without CPU offload, measured
(chapter 11, section 4). Not a twin: it measures, so it lives beside ``naive`` and ``library``.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards over a device mesh. The mesh's device
type is where it computes: ``"cpu"`` (a gloo group) trains on the CPU; ``"cuda"`` moves the
model states to the current GPU, or, with ``CPUOffloadPolicy()``, keeps them in pinned host
memory and copies each unit to the GPU for its forward and backward pass (the optimizer then
steps on the CPU). Pinning host memory needs a GPU driver, so offload needs a GPU. On CUDA the
process group must have a backend for CUDA tensors (``"cpu:gloo,cuda:nccl"``; NCCL runs a
1-process group on one GPU).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class FsdpSteps:
    """What ``measure_fsdp_step`` saw.

    Attributes:
        losses: the training loss of each step.
        seconds_per_step: mean wall time of the steps after the first (its warm-up: optimizer
            states, kernels); the first step's time when ``steps`` is 1.
        peak_allocated: ``torch.cuda.max_memory_allocated()`` in bytes over wrap and steps
            (None on the CPU).
        peak_reserved: ``torch.cuda.max_memory_reserved()`` in bytes (None on the CPU).
        compute_device: where the inputs went.
    """

    losses: list[float]
    seconds_per_step: float
    peak_allocated: int | None
    peak_reserved: int | None
    compute_device: str


def check_offload_device(offload: bool, device: torch.device) -> None:
    """Refuse CPU offload where it cannot run: without a GPU, or with a CPU mesh."""
    if not offload:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            "FSDP CPU offload needs a GPU: it pins the host copy of the model states (page-locked "
            "memory, for asynchronous copies to the GPU), and pinning needs a GPU driver; this "
            "machine has none. Run with offload=False here, or on a GPU machine."
        )
    if device.type != "cuda":
        raise ValueError(
            f"offload moves a GPU's model states to the host: device must be cuda, got {device}"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_fsdp_step(
    build_model: Callable[[], torch.nn.Module],
    batch: torch.Tensor,
    steps: int,
    offload: bool,
    device: str | torch.device,
    lr: float = 3e-3,
) -> FsdpSteps:
    """Wrap a fresh model with ``fully_shard`` (each decoder layer, then the whole model) and run
    ``steps`` AdamW steps (betas 0.9, 0.95) on one batch, in an initialised process group.

    Args:
        build_model: returns a fresh causal LM (``model(input_ids=..., labels=...).loss``) with
            its decoder layers at ``model.model.layers`` (transformers' Llama), on the CPU.
        batch: (B, T) token ids, used as inputs and labels.
        steps: optimizer steps, at least 1.
        offload: ``CPUOffloadPolicy()`` on every unit (model states in pinned host memory).
        device: the mesh's device type: ``"cpu"`` or ``"cuda"`` (the current GPU).
        lr: AdamW's learning rate.
    Returns:
        ``FsdpSteps``: losses, seconds per step, CUDA peaks (None on the CPU).
    Raises:
        RuntimeError: offload without a GPU (pinning needs a driver), or no process group.
        ValueError: offload with a CPU device, or steps below 1.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    device = torch.device(device)
    check_offload_device(offload, device)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
    if not dist.is_initialized():
        raise RuntimeError("measure_fsdp_step needs an initialised process group (see chapter 11)")
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # the whole group, one dim
    policy = CPUOffloadPolicy() if offload else OffloadPolicy()  # OffloadPolicy(): no offload
    model = build_model().train()
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(
            f"build_model must return a model with model.layers, got {type(model).__name__}"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, offload_policy=policy)  # one unit per decoder layer
    fully_shard(model, mesh=mesh, offload_policy=policy)  # the root: embeddings, norm, head
    # Without offload the parameters live where FSDP computes; with it they report the host
    # (that is the point), and FSDP computes on the mesh's device.
    compute = device if offload else next(model.parameters()).device
    inputs = batch.to(compute)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    losses, times = [], []
    for _ in range(steps):
        _synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())  # .item() waits for the GPU
        _synchronize(device)
        times.append(time.perf_counter() - start)
    timed = times[1:] or times
    peaks = (
        (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
        if cuda
        else (None, None)
    )
    del model, opt, loss, inputs, layers
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return FsdpSteps(losses, sum(timed) / len(timed), *peaks, str(compute))
