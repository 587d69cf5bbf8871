"""GGUF block quantization written out in torch: Q8_0 and Q4_0 here, Q4_K in ``kquant.py``.

Both types cut each row of a weight matrix into blocks of 32 values and store, per block, one
fp16 scale ``d`` followed by the codes (ggml's ``block_q8_0`` and ``block_q4_0`` structs):

- Q8_0: ``d = absmax / 127``, ``q = round(x / d)`` in int8; 2 + 32 = 34 bytes per block
  (8.5 bits per weight).
- Q4_0: ``d = m / -8`` where ``m`` is the value of largest magnitude *with its sign*, so that
  ``m`` itself maps to code 0 (value ``-8 d``) exactly; ``q = trunc(x / d + 8.5)`` clipped to
  0..15; two codes per byte, the block's first 16 values in the low nibbles and the last 16 in
  the high nibbles; 2 + 16 = 18 bytes per block (4.5 bits per weight).

The arithmetic follows ggml's reference C (``quantize_row_q8_0_ref`` and
``quantize_row_q4_0_ref`` in ``ggml-quants.c``) step by step, in fp32, so that the bytes equal
the ``gguf`` package's numpy reference (a parity test checks it). Shapes: a weight ``(rows,
cols)`` with ``cols % 32 == 0`` becomes ``uint8 (rows, cols // 32 * bytes_per_block)``.
"""

from __future__ import annotations

import torch

from .blocks import (
    BLOCK_SIZE,
    BYTES_PER_BLOCK,
    VALUES_PER_BLOCK,
    check_scales,
    check_weight,
    split_blocks,
)
from .kquant import quantize_q4_k as quantize_q4_k


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    """(rows, cols) float -> (rows * cols / 32, 32) fp32 blocks, checking the shape."""
    check_weight(weight)
    return weight.detach().to(torch.float32).reshape(-1, BLOCK_SIZE)  # (n_blocks, 32)


def _scale_bytes(d: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 1) fp32 scales -> (n_blocks, 2) bytes of their fp16, little-endian."""
    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``: halves away from zero (torch.round sends halves to even). Written as
    floor(a) + floor(2 * frac(a)) because a + 0.5 can round up in fp32 before the floor."""
    a = v.abs()
    floored = a.floor()
    return v.sign() * (floored + (2 * (a - floored)).floor())


def quantize_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes of a weight.

    Args:
        weight: float tensor ``(..., cols)`` with ``cols % 32 == 0``.

    Returns:
        ``uint8 (..., cols // 32 * 34)``: per block the fp16 scale then 32 int8 codes.
    """
    blocks = _blocks(weight)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127  # (n_blocks, 1)
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)  # an all-zero block keeps d = 0
    codes = _roundf(blocks * inv).to(torch.int8).view(torch.uint8)  # (n_blocks, 32)
    out = torch.cat([_scale_bytes(d), codes], dim=1)  # (n_blocks, 34)
    return check_scales(out, "Q8_0").reshape(*weight.shape[:-1], -1)


def quantize_q4_0(weight: torch.Tensor) -> torch.Tensor:
    """Q4_0 bytes of a weight.

    Args:
        weight: float tensor ``(..., cols)`` with ``cols % 32 == 0``.

    Returns:
        ``uint8 (..., cols // 32 * 18)``: per block the fp16 scale then 16 bytes of codes.
    """
    blocks = _blocks(weight)
    idx = blocks.abs().argmax(dim=1, keepdim=True)  # first index of the largest magnitude
    d = blocks.gather(1, idx) / -8  # signed: the extreme value lands on code 0
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    codes = (blocks * inv + 8.5).trunc().clamp(0, 15).to(torch.uint8)  # (n_blocks, 32)
    packed = codes[:, :16] | (codes[:, 16:] << 4)  # (n_blocks, 16): low nibble = first half
    out = torch.cat([_scale_bytes(d), packed], dim=1)  # (n_blocks, 18)
    return check_scales(out, "Q4_0").reshape(*weight.shape[:-1], -1)


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes ``(..., n * 34)`` -> fp32 ``(..., n * 32)``: ``d * q``."""
    d, codes, lead = split_blocks(data, "Q8_0")
    return (d * codes.contiguous().view(torch.int8).to(torch.float32)).reshape(*lead, -1)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """Q4_0 bytes ``(..., n * 18)`` -> fp32 ``(..., n * 32)``: ``d * (q - 8)``."""
    d, packed, lead = split_blocks(data, "Q4_0")
    codes = torch.cat([packed & 0x0F, packed >> 4], dim=1).to(torch.float32) - 8  # (n, 32)
    return (d * codes).reshape(*lead, -1)


def dequantize_q4_k(data: torch.Tensor) -> torch.Tensor:
    """Q4_K bytes ``(..., n * 144)`` -> fp32 ``(..., n * 256)``: ``d * sc_j * q - dmin * m_j``
    in sub-block ``j``, with the 6-bit ``sc_j``, ``m_j`` unpacked from the 12 scale bytes."""
    if data.dtype != torch.uint8 or data.shape[-1] % BYTES_PER_BLOCK["Q4_K"]:
        raise ValueError(
            f"Q4_K data must be uint8 (..., n * 144), got {data.dtype} {tuple(data.shape)}"
        )
    blocks = data.reshape(-1, BYTES_PER_BLOCK["Q4_K"])  # (n, 144)
    halves = blocks[:, :4].contiguous().view(torch.float16).to(torch.float32)  # (n, 2)
    packed = blocks[:, 4:16].to(torch.int32)  # (n, 12)
    sc = torch.cat([packed[:, :4] & 63, (packed[:, 8:] & 0xF) | ((packed[:, :4] >> 6) << 4)], 1)
    mn = torch.cat([packed[:, 4:8] & 63, (packed[:, 8:] >> 4) | ((packed[:, 4:8] >> 6) << 4)], 1)
    qs = blocks[:, 16:].reshape(-1, 4, 32)  # (n, 4 chunks of 64 values, 32 bytes)
    codes = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(-1, 8, 32).to(torch.float32)
    d, dmin = halves[:, :1, None], halves[:, 1:, None]  # (n, 1, 1)
    values = d * sc[..., None] * codes - dmin * mn[..., None]  # (n, 8, 32)
    return values.reshape(*data.shape[:-1], -1)


def bits_per_weight(kind: str) -> float:
    """Bits stored per weight by a block type, its scales included (8.5 for Q8_0)."""
    if kind not in BYTES_PER_BLOCK:
        raise ValueError(f"unknown GGUF type {kind!r}; known: {sorted(BYTES_PER_BLOCK)}")
    return BYTES_PER_BLOCK[kind] * 8 / VALUES_PER_BLOCK[kind]
