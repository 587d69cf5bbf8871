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

from helpers.checks import finite_tensor

from .kquant import QK_K, quantize_q4_k

BLOCK_SIZE = 32  # values per block of Q8_0 and Q4_0
BYTES_PER_BLOCK = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_K": 2 + 2 + 12 + 128}
VALUES_PER_BLOCK = {"Q8_0": BLOCK_SIZE, "Q4_0": BLOCK_SIZE, "Q4_K": QK_K}

__all__ = ["BLOCK_SIZE", "BYTES_PER_BLOCK", "VALUES_PER_BLOCK", "bits_per_weight"]
__all__ += ["dequantize_q4_0", "dequantize_q4_k", "dequantize_q8_0"]
__all__ += ["quantize_q4_0", "quantize_q4_k", "quantize_q8_0"]


def _check_weight(weight: torch.Tensor) -> None:
    """A float tensor whose last dimension is whole blocks (both twins check this)."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {type(weight).__name__}")
    if weight.ndim < 1 or weight.shape[-1] % BLOCK_SIZE:
        raise ValueError(
            f"weight's last dimension must be a multiple of {BLOCK_SIZE}, got shape "
            f"{tuple(weight.shape)}"
        )
    finite_tensor(weight, "weight")  # a NaN would make its whole block NaN in the file


def _check_scales(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Quantized bytes ``out``, after checking that every fp16 scale in them is finite: a
    block whose scale (Q8_0: absmax / 127, Q4_0: absmax / 8, Q4_K: its 6-bit step) is above
    fp16's 65504 would be stored as inf and read back as inf and NaN (both twins refuse it)."""
    blocks = out.reshape(-1, BYTES_PER_BLOCK[kind])
    halves = 2 if kind == "Q4_K" else 1  # Q4_K stores d and dmin, the others d alone
    scales = blocks[:, : 2 * halves].contiguous().view(torch.float16)  # (n_blocks, halves)
    bad = ~torch.isfinite(scales).all(dim=1)
    if bool(bad.any()):
        block = int(bad.nonzero()[0])
        raise ValueError(
            f"weight: {kind} block {block} (values {block * VALUES_PER_BLOCK[kind]} onward, "
            "counted row after row) needs a scale larger than fp16's 65504: its values are "
            f"too large for {kind} (Q8_0 holds magnitudes up to about 8.3e6, Q4_0 about 5.2e5)."
            " Keep this tensor in F32 or F16, or find why it is so large"
        )
    return out


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    """(rows, cols) float -> (rows * cols / 32, 32) fp32 blocks, checking the shape."""
    _check_weight(weight)
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
    return _check_scales(out, "Q8_0").reshape(*weight.shape[:-1], -1)


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
    return _check_scales(out, "Q4_0").reshape(*weight.shape[:-1], -1)


def _split(data: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """uint8 (..., n * bytes) -> fp32 scales (n_blocks, 1), code bytes, leading shape."""
    if data.dtype != torch.uint8 or data.shape[-1] % BYTES_PER_BLOCK[kind]:
        raise ValueError(
            f"{kind} data must be uint8 with a last dimension multiple of "
            f"{BYTES_PER_BLOCK[kind]}, got {data.dtype} {tuple(data.shape)}"
        )
    blocks = data.reshape(-1, BYTES_PER_BLOCK[kind])
    d = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)  # (n_blocks, 1)
    return d, blocks[:, 2:], tuple(data.shape[:-1])


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes ``(..., n * 34)`` -> fp32 ``(..., n * 32)``: ``d * q``."""
    d, codes, lead = _split(data, "Q8_0")
    return (d * codes.contiguous().view(torch.int8).to(torch.float32)).reshape(*lead, -1)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """Q4_0 bytes ``(..., n * 18)`` -> fp32 ``(..., n * 32)``: ``d * (q - 8)``."""
    d, packed, lead = _split(data, "Q4_0")
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
