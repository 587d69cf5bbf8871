"""GGUF's block layouts, and the checks both twins run on what goes in and comes out.

Shared by ``naive.py``, ``kquant.py`` and ``library.py``: the sizes of a block (values and
bytes) per type, and three checks (a float weight of whole blocks, finite fp16 scales, quantized
bytes of whole blocks), so that both twins refuse the same inputs with the same words.
"""

from __future__ import annotations

import torch

from helpers.checks import finite_tensor

QK_K = 256  # values per super-block of Q4_K
BLOCK_SIZE = 32  # values per block of Q8_0 and Q4_0
BYTES_PER_BLOCK = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_K": 2 + 2 + 12 + 128}
VALUES_PER_BLOCK = {"Q8_0": BLOCK_SIZE, "Q4_0": BLOCK_SIZE, "Q4_K": QK_K}


def check_weight(weight: torch.Tensor) -> None:
    """A float tensor whose last dimension is whole blocks (both twins check this)."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {type(weight).__name__}")
    if weight.ndim < 1 or weight.shape[-1] % BLOCK_SIZE:
        raise ValueError(
            f"weight's last dimension must be a multiple of {BLOCK_SIZE}, got shape "
            f"{tuple(weight.shape)}"
        )
    finite_tensor(weight, "weight")  # a NaN would make its whole block NaN in the file


def check_scales(out: torch.Tensor, kind: str) -> torch.Tensor:
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


def split_blocks(data: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """uint8 (..., n * bytes) -> fp32 scales (n_blocks, 1), code bytes, leading shape."""
    if data.dtype != torch.uint8 or data.shape[-1] % BYTES_PER_BLOCK[kind]:
        raise ValueError(
            f"{kind} data must be uint8 with a last dimension multiple of "
            f"{BYTES_PER_BLOCK[kind]}, got {data.dtype} {tuple(data.shape)}"
        )
    blocks = data.reshape(-1, BYTES_PER_BLOCK[kind])
    d = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)  # (n_blocks, 1)
    return d, blocks[:, 2:], tuple(data.shape[:-1])
