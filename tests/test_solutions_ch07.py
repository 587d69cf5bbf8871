"""Chapter 07's solutions pass their checkers, and plausible wrong answers fail them."""

from __future__ import annotations

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch07_deploy as checkers
from solutions import ch07_deploy as solutions


def test_solutions_pass():
    assert check("q8_0_block", solutions.q8_0_block, checkers.check_q8_0_block)
    assert check("bits_per_weight", solutions.bits_per_weight, checkers.check_bits_per_weight)


def test_stub_is_not_attempted():
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check("q8_0_block", stub, checkers.check_q8_0_block) is False


def _q8_0_round_half_even(x):
    d = x.abs().max() / 127
    q = torch.round(x / d) if d != 0 else torch.zeros_like(x)
    return float(d.to(torch.float16)), q.to(torch.int8)


def _q8_0_fp32_scale(x):
    d, q = solutions.q8_0_block(x)
    return float(x.abs().max() / 127), q  # the unrounded scale


def _q8_0_fp16_scale_codes(x):
    # the stored (fp16) scale used for the codes too: differs from gguf on ~1 block in 5
    d = float((x.abs().max() / 127).to(torch.float16))
    v = x / d if d != 0 else torch.zeros_like(x)
    q = v.sign() * (v.abs().floor() + (2 * (v.abs() - v.abs().floor())).floor())
    return d, q.to(torch.int8)


def _nominal_bits(name):
    return {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q4_K": 4, "Q6_K": 6, "Q2_K": 2}[name]


def _q4_k_as_q4_0(name):
    return 4.5 if name.startswith("Q4") else solutions.bits_per_weight(name)


@pytest.mark.parametrize(
    ("name", "wrong", "checker"),
    [
        ("q8_0_block", _q8_0_round_half_even, checkers.check_q8_0_block),
        ("q8_0_block", _q8_0_fp32_scale, checkers.check_q8_0_block),
        ("q8_0_block", _q8_0_fp16_scale_codes, checkers.check_q8_0_block),
        ("bits_per_weight", _nominal_bits, checkers.check_bits_per_weight),
        ("bits_per_weight", _q4_k_as_q4_0, checkers.check_bits_per_weight),
    ],
)
def test_wrong_answers_fail(name, wrong, checker):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, checker)
