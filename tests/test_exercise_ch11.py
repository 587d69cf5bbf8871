"""Chapter 11's solutions pass their checkers, and plausible wrong answers fail them."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch11_pretraining as checkers
from solutions import ch11_pretraining as solutions


def test_solutions_pass():
    assert check("apply_rope", solutions.apply_rope, checkers.check_apply_rope)
    assert check("rope_attention", solutions.rope_attention, checkers.check_rope_attention)


@pytest.mark.parametrize("seed", range(20))
def test_solutions_pass_for_other_draws(seed):
    checkers.check_apply_rope(solutions.apply_rope, seed=seed)
    checkers.check_rope_attention(solutions.rope_attention, seed=seed)


def test_another_right_form_passes():
    """The same rotation written with the naive twin's helpers, and attention through torch's
    scaled_dot_product_attention: both right, both accepted."""
    checkers.check_apply_rope(checkers.reference_rope)

    def sdpa(q, k, v, theta):
        q, k = checkers.reference_rope(q, theta), checkers.reference_rope(k, theta)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    checkers.check_rope_attention(sdpa)


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("apply_rope", stub, checkers.check_apply_rope) is False
    assert check("rope_attention", stub, checkers.check_rope_attention) is False


def _fixed_base(x, theta):
    return solutions.apply_rope(x, 10_000.0)  # ignores theta


def _negative_angle(x, theta):
    return solutions.apply_rope(x.flip(-1), theta).flip(-1)  # rotates the other way


def _positions_from_one(x, theta):
    pad = torch.zeros_like(x[:, :, :1])
    return solutions.apply_rope(torch.cat([pad, x], dim=2), theta)[:, :, 1:]


def _rope_on_values(q, k, v, theta):
    return solutions.rope_attention(q, k, solutions.apply_rope(v, theta), theta)


def _rope_on_queries_only(q, k, v, theta):
    q = solutions.apply_rope(q, theta)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def _not_causal(q, k, v, theta):
    q, k = solutions.apply_rope(q, theta), solutions.apply_rope(k, theta)
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v


def _no_scaling(q, k, v, theta):
    return solutions.rope_attention(q * math.sqrt(q.shape[-1]), k, v, theta)


WRONG = {
    "interleaved pairs": ("apply_rope", checkers._interleaved_rope, "adjacent pairs"),
    "base 10,000 whatever theta": ("apply_rope", _fixed_base, "base 10000"),
    "rotates the other way": ("apply_rope", _negative_angle, "largest difference"),
    "positions counted from 1": ("apply_rope", _positions_from_one, "largest difference"),
    "returns the input": ("apply_rope", lambda x, theta: x, "largest difference"),
    "RoPE on the values": ("rope_attention", _rope_on_values, "rotated the values"),
    "RoPE on the queries only": ("rope_attention", _rope_on_queries_only, "differs"),
    "no causal mask": ("rope_attention", _not_causal, "no causal mask"),
    "no 1/sqrt(head_dim)": ("rope_attention", _no_scaling, "differs"),
}


@pytest.mark.parametrize("name", WRONG)
def test_wrong_answers_fail_with_their_hint(name):
    exercise, wrong, hint = WRONG[name]
    checker = getattr(checkers, f"check_{exercise}")
    with pytest.raises(ExerciseFailed, match=hint):
        check(exercise, wrong, checker)


def test_reference_is_the_llama_twins_rotation():
    """The checker's reference is the rotation inside the naive Llama, which
    tests/test_llama.py checks against transformers; here, against transformers' own function."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from helpers.llama import naive

    x = torch.randn(2, 3, 6, 8)
    cos, sin = naive.rope_cos_sin(6, 8, 10_000.0)
    expected, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])
    torch.testing.assert_close(checkers.reference_rope(x, 10_000.0), expected)
