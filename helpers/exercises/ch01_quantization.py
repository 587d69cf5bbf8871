"""Checkers for the exercises of chapter 01 (quantization).

Each takes the learner's function and raises AssertionError with a hint when it is wrong.
The references are the course's own helpers, so an exercise checks the idea the chapter built.
"""

from __future__ import annotations

import math

import torch

from helpers.quantization import naive


def check_absmax_int8_roundtrip(fn) -> None:
    """``fn(x)`` must return x after a per-tensor absmax int8 round trip (float32, x's shape)."""
    for x in (torch.randn(7, 33), torch.randn(100) * 50, torch.tensor([0.5, -2.0, 1e-3])):
        out = fn(x.clone())
        assert isinstance(out, torch.Tensor), "return a tensor (the dequantized values)"
        assert out.shape == x.shape, f"return x's shape {tuple(x.shape)}, got {tuple(out.shape)}"
        q, absmax = naive.quantize_absmax_int8(x)
        expected = naive.dequantize_absmax_int8(q, absmax)
        assert not torch.equal(out.float(), x.float()) or torch.equal(expected, x), (
            "you returned x unchanged: did you round to integers before scaling back?"
        )
        assert out.float().unique().numel() <= 255, "int8 has at most 255 levels (-127..127)"
        error = (out.float() - expected).abs()
        # x * 127 / absmax computed in another order may land on the other side of a .5
        # midpoint: one step off there is still right (the draws are random, so it happens).
        scaled = x.float() * (127 / absmax)
        at_midpoint = ((scaled - scaled.floor()) - 0.5).abs() < 1e-4
        step = absmax.item() / 127
        right = (error <= 1e-6 * absmax.item()) | (at_midpoint & (error <= step * 1.001))
        assert bool(right.all()), "scale by 127 / absmax, round, then multiply by absmax / 127"


def check_nf4_bits_per_param(fn) -> None:
    """``fn(blocksize, double_quant)`` must give NF4's bits per parameter."""
    for blocksize in (32, 64, 128, 256):
        plain = fn(blocksize, False)
        assert math.isclose(plain, 4 + 32 / blocksize, rel_tol=1e-9), (
            f"blocksize {blocksize}, no double quant: 4 bits of code plus a float32 absmax "
            "shared by the block"
        )
        double = fn(blocksize, True)
        expected = 4 + 8 / blocksize + 32 / (256 * blocksize)
        assert math.isclose(double, expected, rel_tol=1e-9), (
            f"blocksize {blocksize}, double quant: the absmax becomes 8 bits, and 256 of them "
            "share one float32 scale"
        )


def check_pack_nibbles(fn) -> None:
    """``fn(codes)`` must pack 4-bit codes two per byte, high nibble first, odd N padded with 7."""
    for n in (2, 10, 7, 1):
        codes = torch.randint(0, 16, (n,), dtype=torch.uint8)
        packed = fn(codes.clone())
        assert isinstance(packed, torch.Tensor) and packed.dtype == torch.uint8, "return uint8"
        assert packed.numel() == math.ceil(n / 2), f"{n} codes fill {math.ceil(n / 2)} bytes"
        padded = torch.cat([codes, torch.tensor([7] * (n % 2), dtype=torch.uint8)])
        assert torch.equal(packed.reshape(-1) >> 4, padded[0::2]), (
            "the first code of each pair goes in the high nibble (code << 4)"
        )
        assert torch.equal(packed.reshape(-1) & 0x0F, padded[1::2]), (
            "the second code goes in the low nibble; pad an odd count with 7, NF4's code of 0.0"
        )
    # and it must give back the bytes quantize_nf4 stores for a real (odd-sized) weight
    reference, _ = naive.quantize_nf4(torch.randn(5, 13))  # 65 values, 33 bytes
    codes = torch.stack([reference >> 4, reference & 0x0F], dim=1).reshape(-1)[:65]  # (65,)
    assert torch.equal(fn(codes), reference), "your bytes differ from quantize_nf4's"
