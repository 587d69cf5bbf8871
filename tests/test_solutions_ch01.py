"""Chapter 01's solutions pass their checkers, and plausible wrong answers fail them."""

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch01_quantization as checkers
from solutions import ch01_quantization as solutions


def test_solutions_pass():
    assert check(
        "absmax_int8_roundtrip",
        solutions.absmax_int8_roundtrip,
        checkers.check_absmax_int8_roundtrip,
    )
    assert check(
        "nf4_bits_per_param", solutions.nf4_bits_per_param, checkers.check_nf4_bits_per_param
    )
    assert check("pack_nibbles", solutions.pack_nibbles, checkers.check_pack_nibbles)


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("pack_nibbles", stub, checkers.check_pack_nibbles) is False


def _no_rounding(x):  # forgets to round: gives x back
    absmax = x.abs().max()
    return (x * (127 / absmax)) * absmax / 127


def _scale_by_255(x):  # treats int8 as 256 levels over the absmax range
    absmax = x.abs().max()
    return torch.round(x * (255 / absmax)) * absmax / 255


def _forgets_second_level(blocksize, double_quant):
    return 4 + (8 if double_quant else 32) / blocksize


def _low_nibble_first(codes):
    packed = solutions.pack_nibbles(codes)
    return ((packed & 0x0F) << 4) | (packed >> 4)


def _pads_with_zero(codes):
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])
    return solutions.pack_nibbles(codes)


@pytest.mark.parametrize(
    ("name", "wrong", "checker"),
    [
        ("absmax_int8_roundtrip", _no_rounding, checkers.check_absmax_int8_roundtrip),
        ("absmax_int8_roundtrip", _scale_by_255, checkers.check_absmax_int8_roundtrip),
        ("nf4_bits_per_param", _forgets_second_level, checkers.check_nf4_bits_per_param),
        ("pack_nibbles", _low_nibble_first, checkers.check_pack_nibbles),
        ("pack_nibbles", _pads_with_zero, checkers.check_pack_nibbles),
    ],
)
def test_wrong_answers_fail(name, wrong, checker):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, checker)
