"""Chapter 06's solution passes its checker, and plausible wrong answers fail it."""

from __future__ import annotations

import pytest

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch06_gptq_awq as checkers
from solutions import ch06_gptq_awq as solutions


def test_solutions_pass():
    assert check("gptq_step", solutions.gptq_step, checkers.check_gptq_step)


def test_stub_is_not_attempted():
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check("gptq_step", stub, checkers.check_gptq_step) is False


def _no_feedback(w, u, i, scale, zero):
    w = w.clone()
    w[:, i] = solutions.quantize_column(w[:, i], scale, zero, 4)[1]
    return w


def _in_place(w, u, i, scale, zero):
    w.copy_(solutions.gptq_step(w, u, i, scale, zero))
    return w


def _wrong_sign(w, u, i, scale, zero):
    new = solutions.gptq_step(w, u, i, scale, zero)
    new[:, i + 1 :] = 2 * w[:, i + 1 :] - new[:, i + 1 :]
    return new


@pytest.mark.parametrize("wrong", [_no_feedback, _in_place, _wrong_sign])
def test_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("gptq_step", wrong, checkers.check_gptq_step)
