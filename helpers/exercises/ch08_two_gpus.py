"""Checkers for the exercises of chapter 08 (two GPUs: data parallelism and ZeRO sharding).

Each takes the learner's function and raises AssertionError with a hint when it is wrong.
"""

from __future__ import annotations

import math
import random

STAGE_NAMES = ("none", "zero1", "zero2", "zero3")


def check_rank_losses(fn) -> None:
    """``fn(loss_sums, target_counts)`` must give each rank's loss for DDP (which averages)."""
    rng = random.Random(7)
    for _ in range(5):
        world = rng.randint(2, 4)
        counts = [rng.randint(5, 300) for _ in range(world)]
        sums = [rng.uniform(0.5, 3.0) * c for c in counts]
        got = [float(g) for g in fn(list(sums), list(counts))]
        assert len(got) == world, f"return one loss per rank ({world}), got {len(got)}"
        n = sum(counts)
        if all(
            math.isclose(g, s / c, rel_tol=1e-6) for g, s, c in zip(got, sums, counts, strict=True)
        ):
            raise AssertionError("that is each rank's own mean: the shortcut that weights a token "
                                 "of a rank with few targets more; use the count over all ranks")  # fmt: skip
        if all(math.isclose(g, s / n, rel_tol=1e-6) for g, s in zip(got, sums, strict=True)):
            raise AssertionError("right count, but DDP then averages the gradients over the ranks "
                                 "(divides by the world size): undo that division")  # fmt: skip
        expected = [s * world / n for s in sums]
        assert all(math.isclose(g, e, rel_tol=1e-6) for g, e in zip(got, expected, strict=True)), (
            "each rank: its summed token loss x world size / the target count over all ranks"
        )


def _expected_bytes(weights, gradients, optimizer, world, stage) -> int:
    level = STAGE_NAMES.index(stage)
    return sum(
        math.ceil(b / world) if level >= need else b
        for b, need in ((weights, 3), (gradients, 2), (optimizer, 1))
    )


def check_zero_bytes_per_rank(fn) -> None:
    """``fn(weights, gradients, optimizer, world_size, stage)``: model-state bytes per rank."""
    cases = [(1000, 300, 600, 2), (7_000_001, 40_000, 80_003, 3), (10**9, 8 * 10**6, 1.6e7, 4)]
    for weights, gradients, optimizer, world in cases:
        optimizer = int(optimizer)
        for stage in STAGE_NAMES:
            got = fn(weights, gradients, optimizer, world, stage)
            expected = _expected_bytes(weights, gradients, optimizer, world, stage)
            assert got == expected, (
                f"stage {stage!r}, N={world}, weights {weights}, gradients {gradients}, "
                f"optimizer {optimizer}: expected {expected}, got {got}. ZeRO-1 shards the "
                "optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the weights; a shard "
                "is ceil(bytes / N)"
            )
