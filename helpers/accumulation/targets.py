"""What both accumulation twins count and check: the target tokens of a window.

``count_targets`` is the N that a window's summed loss is divided by; ``require_targets``
refuses a window (or, for a mean of per-micro-batch means, a micro-batch) with no target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from helpers.constants import IGNORE_INDEX


def count_targets(batches: Sequence[dict[str, torch.Tensor]]) -> int:
    """Number of predicted tokens in a window: position t predicts label t + 1, so the first
    label of each row is never a target (transformers counts ``labels[..., 1:]`` too)."""
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def require_targets(micro_batches: Sequence[dict[str, torch.Tensor]], per_batch: bool) -> int:
    """The window's target count N; raise if it is 0 (or, for per-micro-batch means, if any
    micro-batch has none): a mean over no tokens is 0 / 0."""
    counts = [count_targets([b]) for b in micro_batches]
    if not micro_batches or sum(counts) == 0:
        raise ValueError(
            "the window has no target tokens (every label after the first is -100): there is "
            "no loss to average; skip this window (train() does, with a warning)"
        )
    if per_batch and 0 in counts:
        raise ValueError(
            f"micro-batch {counts.index(0)} has no target tokens: its mean loss is 0 / 0"
        )
    return sum(counts)
