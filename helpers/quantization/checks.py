"""What both quantization twins check of their inputs, and the packed-bytes view they share.

``naive.py`` and ``library.py`` refuse the same bad inputs with the same words because both call
these; each twin imports them under the short private names its code uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NF4_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' 4-bit takes
# dtypes bitsandbytes may store packed 4-bit codes in (``quant_storage``): the bytes are the same
STORAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)


def check_float(x: torch.Tensor, what: str) -> None:
    """A float tensor with values to quantize, all finite (absmax of a NaN or inf is useless)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{what} must be a float32, float16 or bfloat16 tensor, got {got}")
    if x.numel() == 0:
        raise ValueError(f"{what} is empty: there is nothing to quantize")
    bad = ~torch.isfinite(x.reshape(-1))
    if bad.any():
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"{what} has {int(bad.sum())} NaN or inf value(s), the first at flat index {first} "
            f"({x.reshape(-1)[first].item()}): find where it comes from; quantizing it would "
            "turn its whole block (or row) into zeros or NaN"
        )


def check_codebook(code: torch.Tensor) -> None:
    """A code book is a 1-D float tensor of 2 to 256 levels, sorted ascending (nearest-level
    search and the block check below rely on the order)."""
    if not isinstance(code, torch.Tensor) or not torch.is_floating_point(code) or code.dim() != 1:
        raise TypeError(f"code must be a 1-D float tensor of levels, got {code!r:.60}")
    if not 2 <= code.numel() <= 256:
        raise ValueError(f"code must hold 2 to 256 levels (a uint8 index), got {code.numel()}")
    if not bool((code[1:] >= code[:-1]).all()):
        first = int((code[1:] < code[:-1]).nonzero()[0]) + 1
        raise ValueError(
            f"code must be sorted ascending; level {first} ({code[first].item():g}) is below "
            f"level {first - 1} ({code[first - 1].item():g}): pass code.sort().values"
        )


def check_stats(n: int, blocksize: int, absmax: torch.Tensor, what: str = "absmax") -> int:
    """Raise unless ``absmax`` holds one value per block of ``blocksize`` among n values."""
    nb = math.ceil(n / blocksize)
    if absmax.numel() != nb:
        raise ValueError(
            f"{what} has {absmax.numel()} values, but {n} values in blocks of {blocksize} need "
            f"{nb}: pass the absmax and blocksize the quantizer used"
        )
    return nb


def check_blocks_hold_their_absmax(
    codes: torch.Tensor, absmax: torch.Tensor, n_levels: int, blocksize: int
) -> None:
    """Each block's largest value was divided by itself: it maps to level -1 or +1 (the first or
    last of a sorted code book) unless the block is all zero. A block without either code was
    cut with another blocksize: the stats belong to a different layout."""
    nb = absmax.numel()
    flat = codes.reshape(-1).long()
    idx = torch.nn.functional.pad(flat, (0, nb * blocksize - flat.numel()), value=-1)
    blocks = idx.view(nb, blocksize)  # (nb, B); padding -1 is no code
    has_extreme = ((blocks == 0) | (blocks == n_levels - 1)).any(dim=1)
    bad = ~has_extreme & (absmax.reshape(-1) > 0)
    if bad.any():
        raise ValueError(
            f"block {int(bad.nonzero()[0])} of {nb} holds no code for +-1, so it was not "
            f"quantized in blocks of {blocksize}: pass the blocksize the quantizer used"
        )


def check_blocksize(blocksize: int, allowed: Sequence[int] | None = None) -> None:
    if allowed is not None and blocksize not in allowed:
        raise ValueError(f"blocksize must be one of {tuple(allowed)}, got {blocksize}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize}")


def check_int8_stats(q: torch.Tensor, absmax: torch.Tensor) -> None:
    """absmax is one value for the whole tensor, or one per row of a matrix q (R, C)."""
    if q.dtype != torch.int8:
        raise TypeError(f"q must be an int8 tensor, got {q.dtype}")
    rows = q.shape[0] if q.dim() == 2 else None
    if absmax.numel() != 1 and absmax.numel() != rows:
        raise ValueError(
            f"absmax has {absmax.numel()} values; q of shape {tuple(q.shape)} needs 1 (one "
            f"scale for the tensor) or one per row ({rows} for a matrix): pass the absmax "
            "the quantizer returned"
        )


def check_zeropoint(scale: float, zero_point: int) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if not (isinstance(zero_point, int) and 0 <= zero_point <= 255):
        raise ValueError(f"zero_point must be an integer in 0..255, got {zero_point!r}")


def packed_bytes(packed: torch.Tensor, n: int, shape: Sequence[int]) -> torch.Tensor:
    """The packed codes as (ceil(N / 2),) uint8, whatever ``quant_storage`` held them."""
    if not isinstance(packed, torch.Tensor) or packed.dtype not in STORAGE_DTYPES:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(
            f"packed must be a tensor of uint8 (or float16/bfloat16/float32 storage), got {got}"
        )
    flat = packed.reshape(-1).view(torch.uint8)
    if flat.numel() != math.ceil(n / 2):
        raise ValueError(
            f"packed holds {flat.numel()} bytes, but shape {tuple(shape)} ({n} values) needs "
            f"ceil({n} / 2) = {math.ceil(n / 2)}: pass the shape you quantized"
        )
    return flat


def check_storage(quant_storage: torch.dtype, n: int) -> int:
    """bitsandbytes views the packed bytes as ``quant_storage``: they must fill whole items."""
    if quant_storage not in STORAGE_DTYPES:
        raise TypeError(f"quant_storage must be one of {STORAGE_DTYPES}, got {quant_storage}")
    size = torch.empty(0, dtype=quant_storage).element_size()
    if math.ceil(n / 2) % size:
        raise ValueError(
            f"quant_storage={quant_storage} packs {size} bytes per item, but {n} values make "
            f"{math.ceil(n / 2)} bytes: use torch.uint8 storage for this shape"
        )
    return size


def check_int8_linear(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_float(x, "x")
    check_float(weight, "weight")
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x (..., C) and weight (O, C) must share C: got x {tuple(x.shape)} and weight "
            f"{tuple(weight.shape)}"
        )
