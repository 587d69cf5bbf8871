"""Exercise checkers accept every right answer and reject wrong ones, whatever their random
draws: no flaky verdicts (ties, equal counts)."""

from __future__ import annotations

import pytest
import torch

from helpers.exercises import ch01_quantization as ch01
from helpers.exercises import ch04_gradient_accumulation as ch04
from solutions import ch01_quantization as solutions_ch01
from solutions import ch04_gradient_accumulation as solutions

SEEDS = 20_000


def test_scaled_losses_accepts_the_solution_for_every_seed():
    for seed in range(SEEDS):
        ch04.check_scaled_losses(solutions.scaled_losses, seed=seed)


def test_scaled_losses_accepts_other_right_forms():
    def as_fractions(sums, counts):
        return [s * (1 / sum(counts)) for s in sums]

    for seed in range(2_000):
        ch04.check_scaled_losses(as_fractions, seed=seed)


WRONG = {
    "mean of means": lambda sums, counts: [
        s / c / len(counts) for s, c in zip(sums, counts, strict=True)
    ],
    "per-micro-batch mean": lambda sums, counts: [s / c for s, c in zip(sums, counts, strict=True)],
    "divide by k only": lambda sums, counts: [s / len(counts) for s in sums],
    "not divided": lambda sums, counts: list(sums),
    "one loss too few": lambda sums, counts: [s / sum(counts) for s in sums][:-1],
}


@pytest.mark.parametrize("name", WRONG)
def test_scaled_losses_rejects_wrong_answers_for_every_seed(name):
    for seed in range(2_000):
        with pytest.raises(AssertionError):
            ch04.check_scaled_losses(WRONG[name], seed=seed)


def test_windows_never_have_equal_counts():
    import random

    rng = random.Random(0)
    for _ in range(SEEDS):
        _, counts = ch04._window(rng)
        assert len(set(counts)) == len(counts)


def _divides_first(x):
    """Right, computed in another order: x / absmax * 127 (not x * (127 / absmax))."""
    x = x.float()
    absmax = x.abs().max()
    return torch.round(x / absmax * 127) * absmax / 127


def _floors(x):
    x = x.float()
    absmax = x.abs().max()
    return torch.floor(x * (127 / absmax)) * absmax / 127


def test_absmax_checker_accepts_another_order_and_rejects_floor():
    torch.manual_seed(0)
    for _ in range(300):  # 300 x 331 random values: midpoints do occur
        ch01.check_absmax_int8_roundtrip(_divides_first)
        ch01.check_absmax_int8_roundtrip(solutions_ch01.absmax_int8_roundtrip)
    for _ in range(50):
        with pytest.raises(AssertionError):
            ch01.check_absmax_int8_roundtrip(_floors)
