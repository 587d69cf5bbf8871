"""Solutions to the exercises of chapter 04 (gradient accumulation, memory). Try them first."""

from __future__ import annotations

import math


def scaled_losses(loss_sums: list[float], target_counts: list[int]) -> list[float]:
    """The loss each micro-batch should call backward on, so that the window's summed
    gradient is the full batch's: its summed token loss divided by the window's count.

    Args:
        loss_sums: each micro-batch's summed token loss.
        target_counts: each micro-batch's number of target tokens.
    Returns:
        One float per micro-batch.
    """
    n_window = sum(target_counts)
    return [s / n_window for s in loss_sums]


def adamw_state_bytes(n: int, eight_bit: bool = False) -> int:
    """Bytes of AdamW's two moments for one tensor of n values (step counter left out).

    fp32: 4 bytes each, 8 per value. bitsandbytes 8-bit: one byte each, plus an fp32 absmax
    per block of 256 for each moment; tensors under 4096 values keep fp32 moments.
    """
    if eight_bit and n >= 4096:
        return 2 * n + 2 * 4 * math.ceil(n / 256)
    return 8 * n


def largest_micro_batch(planner, shape, run, card_gib: float) -> int:
    """The largest micro-batch whose planned peak fits ``card_gib`` GiB (0 if none).

    Args:
        planner: ``helpers.memory.naive`` (its ``training_memory(shape, run).peak``).
    """
    capacity = card_gib * 2**30
    best = 0
    while planner.training_memory(shape, run.with_(micro_batch_size=best + 1)).peak <= capacity:
        best += 1
    return best
