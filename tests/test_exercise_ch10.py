"""Chapter 10's solution passes its checker, and plausible wrong DPO losses fail it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch10_preference as checkers
from solutions import ch10_preference as solutions


def test_solution_passes():
    assert check("dpo_loss", solutions.dpo_loss, checkers.check_dpo_loss)


def test_the_checker_agrees_with_the_naive_twins_formula():
    """The checker's reference is the loss line of ``helpers.dpo.naive.dpo_loss``: a rewritten
    form (log(1 + exp(-x))) passes too."""

    def softplus_form(chosen, rejected, ref_chosen, ref_rejected, beta):
        margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        return F.softplus(-margin).mean()

    assert check("dpo_loss", softplus_form, checkers.check_dpo_loss)


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("dpo_loss", stub, checkers.check_dpo_loss) is False


def _no_reference(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


def _wrong_sign(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * ((rejected - ref_rejected) - (chosen - ref_chosen))).mean()


def _no_beta(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid((chosen - ref_chosen) - (rejected - ref_rejected)).mean()


def _summed(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).sum()


def _reference_swapped(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * ((ref_chosen - chosen) - (ref_rejected - rejected))).mean()


def _chosen_only(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * (chosen - ref_chosen)).mean()


def _per_pair(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_no_reference, "reference terms are missing"),
        (_wrong_sign, "sign is flipped"),
        (_no_beta, "beta is missing"),
        (_summed, "sum over pairs"),
        (_reference_swapped, "sign is flipped"),  # the same as a flipped sign
        (_chosen_only, "expected"),
        (_per_pair, "one number"),
    ],
)
def test_wrong_answers_are_rejected(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check("dpo_loss", wrong, checkers.check_dpo_loss)


def test_the_draws_tell_the_mistakes_apart():
    """Each draw moves every mistake far from the right loss (not a near miss by rounding)."""
    for seed, (n, beta) in enumerate(checkers.DRAWS):
        logps = checkers._draw(n, seed)
        right = solutions.dpo_loss(*logps, beta)
        for wrong in (_no_reference, _wrong_sign, _no_beta, _summed, _chosen_only):
            assert abs(float(wrong(*logps, beta) - right)) > 1e-3, (wrong.__name__, seed)
    assert all(beta != 1.0 for _, beta in checkers.DRAWS)
    assert torch.is_tensor(right)
