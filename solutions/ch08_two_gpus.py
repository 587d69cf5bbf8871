"""Solutions to the exercises of chapter 08 (two GPUs). Try them first."""

from __future__ import annotations

import math


def rank_losses(loss_sums: list[float], target_counts: list[int]) -> list[float]:
    """The loss each rank calls backward on, when DDP then averages the gradients over ranks.

    Args:
        loss_sums: each rank's summed token loss over its micro-batches.
        target_counts: each rank's number of target tokens.
    Returns:
        One float per rank: summed loss x world size / the target count over all ranks.
    """
    world, n_all = len(loss_sums), sum(target_counts)
    return [s * world / n_all for s in loss_sums]


def zero_bytes_per_rank(
    weights: int, gradients: int, optimizer: int, world_size: int, stage: str
) -> int:
    """Bytes of weights + gradients + optimizer state on one rank under a ZeRO stage.

    Args:
        stage: "none", "zero1" (optimizer sharded), "zero2" (+ gradients), "zero3" (+ weights).
    Returns:
        The sum, each sharded state counted as ceil(bytes / world_size).
    """
    level = ("none", "zero1", "zero2", "zero3").index(stage)

    def share(nbytes: int, sharded: bool) -> int:
        return math.ceil(nbytes / world_size) if sharded else nbytes

    return share(weights, level >= 3) + share(gradients, level >= 2) + share(optimizer, level >= 1)
