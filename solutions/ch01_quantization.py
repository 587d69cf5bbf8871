"""Solutions to the exercises of chapter 01 (quantization). Try them yourself first."""

from __future__ import annotations

import torch


def absmax_int8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """Quantize x to int8 with one absmax for the whole tensor, then dequantize.

    Args:
        x: float tensor, any shape.

    Returns:
        float32 tensor of x's shape: round(x * 127 / absmax) * absmax / 127.
    """
    x = x.float()
    absmax = x.abs().max().clamp(min=1e-38)  # an all-zero tensor stays zero
    q = torch.round(x * (127 / absmax)).clamp(-127, 127)  # integers in -127..127
    return q * absmax / 127


def nf4_bits_per_param(blocksize: int = 64, double_quant: bool = False) -> float:
    """Bits each parameter costs in NF4: 4 for the code, plus its share of the absmax.

    Without double quantization every block stores one float32 absmax (32 / blocksize bits per
    value). With it, the absmax is an 8-bit code (8 / blocksize) and every 256 absmax share a
    float32 scale (32 / (256 * blocksize)); the one offset per tensor is left out.
    """
    if double_quant:
        return 4 + 8 / blocksize + 32 / (256 * blocksize)
    return 4 + 32 / blocksize


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte, the first in the high nibble, bitsandbytes' layout.

    Args:
        codes: uint8 (N,), values 0..15. An odd N is padded with 7, the code of 0.0 in NF4.

    Returns:
        uint8 (ceil(N / 2),).
    """
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.tensor([7], dtype=torch.uint8)])
    pairs = codes.to(torch.uint8).view(-1, 2)  # (ceil(N / 2), 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]
