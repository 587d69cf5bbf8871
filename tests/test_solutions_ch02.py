"""Chapter 02's exercises: every solution passes its checker, and plausible mistakes fail it."""

from __future__ import annotations

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch02_lora as checkers
from solutions import ch02_lora as solutions


@pytest.mark.parametrize("name", ["lora_param_count", "lora_forward", "merge_weight"])
def test_solution_passes(name):
    assert check(name, getattr(solutions, name), getattr(checkers, f"check_{name}")) is True


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("lora_forward", stub, checkers.check_lora_forward) is False


WRONG_ANSWERS = {
    "lora_param_count": [
        lambda i, o, r: i * o,  # the frozen weight's size
        lambda i, o, r: r * i * o,  # multiplied instead of added
        lambda i, o, r: 2 * r * i,  # assumed a square layer
    ],
    "lora_forward": [
        lambda x, w, b, a, bb, s: x @ w.T + b,  # no update at all
        lambda x, w, b, a, bb, s: x @ w.T + b + (x @ a.T) @ bb.T,  # forgot the scaling
        lambda x, w, b, a, bb, s: x @ w.T + s * (x @ a.T) @ bb.T,  # dropped the bias
        lambda x, w, b, a, bb, s: x @ w.T + b + s * (x @ bb) @ a,  # B and A swapped
    ],
    "merge_weight": [
        lambda w, a, b, s: w.add_(s * (b @ a)),  # right values, but W modified in place
        lambda w, a, b, s: w + b @ a,  # forgot the scaling
        lambda w, a, b, s: w + s * (a.T @ b.T),  # the transpose of the update
    ],
}


@pytest.mark.parametrize(
    "name,wrong", [(name, fn) for name, fns in WRONG_ANSWERS.items() for fn in fns]
)
def test_wrong_answer_fails(name, wrong):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, getattr(checkers, f"check_{name}"))


def test_checkers_draw_fresh_inputs():
    # A constant answer that happens to fit one draw must not pass: the checker tries several.
    constant = torch.zeros(3, 3)
    with pytest.raises(ExerciseFailed):
        check("merge_weight", lambda w, a, b, s: constant, checkers.check_merge_weight)
