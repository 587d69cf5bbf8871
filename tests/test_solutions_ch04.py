"""Chapter 04's solutions pass their checkers, and plausible wrong answers fail them."""

import math

import pytest

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch04_gradient_accumulation as checkers
from solutions import ch04_gradient_accumulation as solutions


def test_solutions_pass():
    assert check("scaled_losses", solutions.scaled_losses, checkers.check_scaled_losses)
    assert check("adamw_state_bytes", solutions.adamw_state_bytes, checkers.check_adamw_state_bytes)
    assert check(
        "largest_micro_batch", solutions.largest_micro_batch, checkers.check_largest_micro_batch
    )


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("scaled_losses", stub, checkers.check_scaled_losses) is False


def _mean_of_means(sums, counts):
    return [s / c / len(counts) for s, c in zip(sums, counts, strict=True)]


def _per_micro_batch_mean(sums, counts):
    return [s / c for s, c in zip(sums, counts, strict=True)]


def _ignores_min_size(n, eight_bit=False):
    return 2 * n + 8 * math.ceil(n / 256) if eight_bit else 8 * n


def _forgets_absmax(n, eight_bit=False):
    return 2 * n if eight_bit and n >= 4096 else 8 * n


def _off_by_one(planner, shape, run, card_gib):
    return solutions.largest_micro_batch(planner, shape, run, card_gib) + 1


def _ignores_context(planner, shape, run, card_gib):
    best = 0
    while (
        planner.training_memory(shape, run.with_(micro_batch_size=best + 1), device="cpu").peak
        <= card_gib * 2**30
    ):
        best += 1
    return best


@pytest.mark.parametrize(
    ("name", "wrong", "checker"),
    [
        ("scaled_losses", _mean_of_means, checkers.check_scaled_losses),
        ("scaled_losses", _per_micro_batch_mean, checkers.check_scaled_losses),
        ("adamw_state_bytes", _ignores_min_size, checkers.check_adamw_state_bytes),
        ("adamw_state_bytes", _forgets_absmax, checkers.check_adamw_state_bytes),
        ("largest_micro_batch", _off_by_one, checkers.check_largest_micro_batch),
        ("largest_micro_batch", _ignores_context, checkers.check_largest_micro_batch),
    ],
)
def test_wrong_answers_fail(name, wrong, checker):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, checker)
