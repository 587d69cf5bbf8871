"""Chapter 04's memory planner, per rank, for data parallelism with ZeRO sharding and offload.

With N data-parallel ranks, each rank runs its own micro-batch, so activations do not shrink;
what ZeRO (Rajbhandari et al. 2020, "ZeRO: memory optimizations toward training trillion
parameter models", section 5) shards across the N ranks is the model states:

| stage | optimizer state | gradients | weights |
|---|---|---|---|
| none (DDP) | whole | whole | whole |
| ZeRO-1 | 1/N | whole | whole |
| ZeRO-2 | 1/N | 1/N | whole |
| ZeRO-3 (FSDP's FULL_SHARD, ``fully_shard``) | 1/N | 1/N | 1/N, one layer gathered at a time |

CPU offload moves sharded states to host memory: ZeRO-Offload (Ren et al. 2021) keeps the
gradients and optimizer state on the CPU and runs the optimizer step there ("optimizer");
ZeRO-3 with parameter offload (ZeRO-Infinity, FSDP's ``CPUOffloadPolicy``) moves the weights
too ("all"). The GPU then holds activations and the one layer being computed.

Everything unsharded comes from ``helpers.memory.naive.training_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from helpers.memory import ModelShape, RunSpec
from helpers.memory import naive as mem_naive

STAGES = ("none", "zero1", "zero2", "zero3")
OFFLOADS = ("none", "optimizer", "all")

__all__ = ["STAGES", "OFFLOADS", "RankMemory", "per_rank_memory"]


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds on its device, by category, and what it keeps in host memory."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    transient: int  # backward's workspace, plus under ZeRO-3 one gathered layer's weights
    overhead: int  # CUDA context allowance (0 on a CPU)
    host: int  # offloaded to CPU memory

    @property
    def model_states(self) -> int:
        """Weights + gradients + optimizer state on the device: what sharding divides."""
        return self.weights + self.gradients + self.optimizer

    @property
    def peak(self) -> int:
        return self.model_states + self.activations + self.transient + self.overhead


def per_rank_memory(
    shape: ModelShape,
    run: RunSpec,
    world_size: int,
    stage: str = "none",
    offload: str = "none",
    device: str = "cuda",
) -> RankMemory:
    """Plan one rank's memory under data parallelism with a ZeRO stage and CPU offload.

    Args:
        shape, run: as for ``helpers.memory.naive.training_memory`` (run: one rank's micro-batch).
        world_size: N, the number of data-parallel ranks (GPUs).
        stage: "none", "zero1", "zero2" or "zero3" (see the module docstring).
        offload: "none", "optimizer" (needs a ZeRO stage) or "all" (needs "zero3").
        device: "cuda" adds the CUDA context allowance, "cpu" does not.
    Returns:
        RankMemory in bytes; a sharded state is ceil(bytes / N) (rank 0's share).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {OFFLOADS}, got {offload!r}")
    if offload == "optimizer" and stage == "none":
        raise ValueError("offload='optimizer' needs a ZeRO stage (zero1, zero2 or zero3)")
    if offload == "all" and stage != "zero3":
        raise ValueError("offload='all' (weights too) needs stage='zero3'")
    whole = mem_naive.training_memory(shape, run, device=device)
    level = STAGES.index(stage)

    def share(nbytes: int, sharded: bool) -> int:
        return math.ceil(nbytes / world_size) if sharded else nbytes

    weights = share(whole.weights, level >= 3)
    gradients = share(whole.gradients, level >= 2)
    optimizer = share(whole.optimizer, level >= 1)
    # ZeRO-3 gathers one decoder layer's weights for its forward and backward
    transient = whole.transient + (whole.weights // shape.num_layers if level >= 3 else 0)
    host = 0
    if offload != "none":
        host, gradients, optimizer = gradients + optimizer, 0, 0
    if offload == "all":
        host, weights = host + weights, 0
    return RankMemory(
        weights, gradients, optimizer, whole.activations, transient, whole.overhead, host
    )
