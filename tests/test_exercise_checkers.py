"""Exercise checkers accept every right answer and reject wrong ones, whatever their random
draws: no flaky verdicts (ties, equal counts)."""

from __future__ import annotations

import pytest

from helpers.exercises import ch04_gradient_accumulation as ch04
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
