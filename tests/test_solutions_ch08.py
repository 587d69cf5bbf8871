"""Chapter 08's solutions pass their checkers, and plausible wrong answers fail them."""

import math

import pytest

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch08_two_gpus as checkers
from solutions import ch08_two_gpus as solutions


def test_solutions_pass():
    assert check("rank_losses", solutions.rank_losses, checkers.check_rank_losses)
    assert check(
        "zero_bytes_per_rank", solutions.zero_bytes_per_rank, checkers.check_zero_bytes_per_rank
    )


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("rank_losses", stub, checkers.check_rank_losses) is False


def _local_mean(sums, counts):
    return [s / c for s, c in zip(sums, counts, strict=True)]


def _forgets_ddp_average(sums, counts):
    return [s / sum(counts) for s in sums]


def _mean_of_rank_means(sums, counts):
    return [s / c / len(counts) for s, c in zip(sums, counts, strict=True)]


def _zero2_shards_weights(w, g, o, n, stage):
    level = ("none", "zero1", "zero2", "zero3").index(stage)
    return sum(math.ceil(b / n) if level >= k else b for b, k in ((w, 2), (g, 2), (o, 1)))


def _floor_division(w, g, o, n, stage):
    level = ("none", "zero1", "zero2", "zero3").index(stage)
    return sum(b // n if level >= k else b for b, k in ((w, 3), (g, 2), (o, 1)))


def _zero1_shards_gradients(w, g, o, n, stage):
    level = ("none", "zero1", "zero2", "zero3").index(stage)
    return sum(math.ceil(b / n) if level >= k else b for b, k in ((w, 3), (g, 1), (o, 1)))


@pytest.mark.parametrize(
    ("name", "wrong", "checker"),
    [
        ("rank_losses", _local_mean, checkers.check_rank_losses),
        ("rank_losses", _forgets_ddp_average, checkers.check_rank_losses),
        ("rank_losses", _mean_of_rank_means, checkers.check_rank_losses),
        ("zero_bytes_per_rank", _zero2_shards_weights, checkers.check_zero_bytes_per_rank),
        ("zero_bytes_per_rank", _floor_division, checkers.check_zero_bytes_per_rank),
        ("zero_bytes_per_rank", _zero1_shards_gradients, checkers.check_zero_bytes_per_rank),
    ],
)
def test_wrong_answers_fail(name, wrong, checker):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, checker)


def test_checker_agrees_with_the_planner():
    """The exercise's rule is the planner's (helpers.distributed.plan), not a second copy."""
    from helpers.distributed import plan
    from helpers.memory import RunSpec
    from helpers.memory import naive as mem_naive

    shape, run = mem_naive.MODELS["Qwen2.5-0.5B"], RunSpec("full", 1, 128)
    whole = mem_naive.training_memory(shape, run)
    for stage in plan.STAGES:
        planned = plan.per_rank_memory(shape, run, 2, stage).model_states
        got = solutions.zero_bytes_per_rank(
            whole.weights, whole.gradients, whole.optimizer, 2, stage
        )
        assert got == planned
