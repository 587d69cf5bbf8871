"""Chapter 03's solutions pass their checkers, and plausible wrong answers fail them."""

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch03_qlora as checkers
from helpers.quantization import naive as quant
from solutions import ch03_qlora as solutions


def test_solutions_pass():
    assert check("merge_weight", solutions.merge_weight, checkers.check_merge_weight)
    assert check("unscale_gradients", solutions.unscale_gradients, checkers.check_unscale_gradients)
    pair = (solutions.snapshot_rng, solutions.restore_rng)
    assert check("rng_snapshot", pair, checkers.check_rng_snapshot)


def test_stubs_are_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("merge_weight", stub, checkers.check_merge_weight) is False
    assert check("rng_snapshot", (stub, stub), checkers.check_rng_snapshot) is False


def _requantized(packed, absmax, shape, lora_A, lora_B, scaling):  # the wrong merge
    merged = solutions.merge_weight(packed, absmax, shape, lora_A, lora_B, scaling)
    return quant.dequantize_nf4(*quant.quantize_nf4(merged), shape)


def _no_scaling(packed, absmax, shape, lora_A, lora_B, scaling):
    return quant.dequantize_nf4(packed, absmax, shape) + lora_B @ lora_A


def _divides_in_fp16(scaled_grads, scale):
    grads = [(g / scale).float() for g in scaled_grads]
    return grads, not all(bool(torch.isfinite(g).all()) for g in grads)


def _never_finds_inf(scaled_grads, scale):
    return [g.float() / scale for g in scaled_grads], False


def _torch_only():
    return torch.get_rng_state()


@pytest.mark.parametrize(
    ("name", "answer", "checker"),
    [
        ("merge_weight", _requantized, checkers.check_merge_weight),
        ("merge_weight", _no_scaling, checkers.check_merge_weight),
        ("unscale_gradients", _divides_in_fp16, checkers.check_unscale_gradients),
        ("unscale_gradients", _never_finds_inf, checkers.check_unscale_gradients),
        ("rng_snapshot", (_torch_only, torch.set_rng_state), checkers.check_rng_snapshot),
    ],
)
def test_wrong_answers_fail(name, answer, checker):
    with pytest.raises(ExerciseFailed):
        check(name, answer, checker)
