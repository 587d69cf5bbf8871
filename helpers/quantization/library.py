"""The same quantizers as ``naive``, done by the libraries people run: bitsandbytes
(``bitsandbytes.functional`` and its registered ``torch.ops.bitsandbytes`` kernels) and, for
the zero-point scheme bitsandbytes does not offer, torch's own quantized tensors.

Same public names, arguments and return layouts as ``helpers.quantization.naive``.
Dimension names: N values, B block size, nb blocks, T rows of activations, C columns, O outputs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import bitsandbytes.functional as bnbf
import torch

from helpers import bnb_cpu  # noqa: F401  (before bitsandbytes: one layout on every CPU)
from helpers.quantization import checks

# The checks both twins run, defined once in checks.py, under the names this code uses.
_NF4_BLOCKSIZES = checks.NF4_BLOCKSIZES
_check_blocks_hold_their_absmax = checks.check_blocks_hold_their_absmax
_check_blocksize = checks.check_blocksize
_check_codebook = checks.check_codebook
_check_float = checks.check_float
_check_int8_linear = checks.check_int8_linear
_check_int8_stats = checks.check_int8_stats
_check_stats = checks.check_stats
_check_storage = checks.check_storage
_check_zeropoint = checks.check_zeropoint
_packed_bytes = checks.packed_bytes


def quantize_absmax_int8(
    x: torch.Tensor, per_row: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 via bitsandbytes' vector-wise quantizer (one row = the whole tensor).

    Returns:
        ``(q, absmax)``: int8 with x's shape; float32 (R,) or (1,).
    """
    _check_float(x, "x")
    if per_row and x.dim() != 2:
        raise ValueError(f"per_row needs a matrix (R, C), got shape {tuple(x.shape)}")
    rows = x.float() if per_row else x.float().reshape(1, -1)  # (R, C) or (1, N)
    q, absmax, _ = bnbf.int8_vectorwise_quant(rows)
    return q.reshape(x.shape), absmax


def dequantize_absmax_int8(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Undo ``quantize_absmax_int8`` with bitsandbytes' int8_vectorwise_dequant."""
    _check_int8_stats(q, absmax)  # bitsandbytes would broadcast a wrong count silently
    rows = q.reshape(absmax.numel(), -1)  # (R, C) or (1, N)
    return bnbf.int8_vectorwise_dequant(rows, absmax).reshape(q.shape)


def quantize_zeropoint_int8(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Asymmetric 8-bit with torch's ``quantize_per_tensor`` (quint8).

    Returns:
        ``(q, scale, zero_point)``: uint8 with x's shape.
    """
    _check_float(x, "x")
    x = x.float()
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    zero_point = int(min(max(round(-lo / scale), 0), 255))
    with warnings.catch_warnings():  # torch 2.13 deprecates quantized dtypes; still the reference
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    return q.int_repr(), scale, zero_point


def dequantize_zeropoint_int8(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Undo ``quantize_zeropoint_int8`` through a torch quantized tensor."""
    _check_zeropoint(scale, zero_point)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        qt = torch._make_per_tensor_quantized_tensor(q, scale, zero_point)
    return qt.dequantize()


def linear_codebook(bits: int) -> torch.Tensor:
    """bitsandbytes' linear map without its padding zeros: (2**bits - 1,) levels in [-1, 1]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    levels = bnbf.create_linear_map(signed=True, total_bits=bits)  # (256,), zeros as padding
    # its torch.linspace puts -4e-8 where 0 belongs; snap it so the padding zeros merge with it
    levels = torch.where(levels.abs() < 1e-6, torch.zeros_like(levels), levels)
    return levels.unique()  # sorted, no repeats


def dynamic_codebook() -> torch.Tensor:
    """bitsandbytes' 8-bit dynamic map, (256,)."""
    return bnbf.create_dynamic_map()


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels bitsandbytes hard-codes, (16,). Its default device is CUDA."""
    return bnbf.get_4bit_type("nf4", device="cpu")


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor, blocksize: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' blockwise quantizer. Its CPU kernel reads exactly 256 levels.

    Returns:
        ``(codes, absmax)``: uint8 with x's shape; float32 (nb,).
    """
    _check_float(x, "x")
    _check_blocksize(blocksize)
    _check_codebook(code)
    if code.numel() != 256:
        raise ValueError(f"bitsandbytes needs a code book of 256 levels, got {code.numel()}")
    codes, state = bnbf.quantize_blockwise(x, code=code.clone(), blocksize=blocksize)
    return codes, state.absmax


def dequantize_blockwise(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    blocksize: int = 256,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """bitsandbytes' blockwise dequantizer, after the naive twin's checks of the statistics
    (bitsandbytes itself reads whatever absmax it is given)."""
    _check_blocksize(blocksize)
    _check_codebook(code)
    _check_stats(codes.numel(), blocksize, absmax)
    _check_blocks_hold_their_absmax(codes, absmax, code.numel(), blocksize)
    state = bnbf.QuantState(absmax=absmax, code=code, blocksize=blocksize, dtype=dtype)
    return bnbf.dequantize_blockwise(codes, quant_state=state)


def quantize_nf4(
    weight: torch.Tensor, blocksize: int = 64, quant_storage: torch.dtype = torch.uint8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bitsandbytes.functional.quantize_4bit(quant_type="nf4")``, its bytes flattened.

    Returns:
        ``(packed, absmax)``: (ceil(N / 2) / itemsize,) of ``quant_storage``; float32
        (ceil(N / B),).
    """
    _check_float(weight, "weight")
    _check_blocksize(blocksize, _NF4_BLOCKSIZES)
    _check_storage(quant_storage, weight.numel())  # bitsandbytes fails with a view error
    packed, state = bnbf.quantize_4bit(
        weight, blocksize=blocksize, quant_type="nf4", quant_storage=quant_storage
    )
    return packed.reshape(-1), state.absmax  # bnb stores the bytes as a column (ceil(N/2), 1)


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: Sequence[int],
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``bitsandbytes.functional.dequantize_4bit`` for NF4 bytes and plain absmax."""
    _check_blocksize(blocksize, _NF4_BLOCKSIZES)
    n = math.prod(shape)
    _packed_bytes(packed, n, shape)
    _check_stats(n, blocksize, absmax)
    state = bnbf.QuantState(
        absmax=absmax.float(),
        shape=torch.Size(shape),
        dtype=dtype,
        blocksize=blocksize,
        code=nf4_codebook(),
        quant_type="nf4",
    )
    out = bnbf.dequantize_4bit(_packed_bytes(packed, n, shape).reshape(-1, 1), quant_state=state)
    return out.reshape(tuple(shape))  # bnb transposes a one-byte input; undo that


def double_quantize_absmax(
    absmax: torch.Tensor, blocksize: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``quantize_4bit(compress_statistics=True)`` does to the absmax: mean offset, then
    8-bit blockwise with the dynamic map.

    Returns:
        ``(qabsmax, absmax2, offset)``: uint8 (nb,), float32 (ceil(nb / 256),), float32 scalar.
    """
    _check_float(absmax, "absmax")
    offset = absmax.float().mean()
    qabsmax, state2 = bnbf.quantize_blockwise(absmax.float() - offset, blocksize=blocksize)
    return qabsmax, state2.absmax, offset


def double_dequantize_absmax(
    qabsmax: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor, blocksize: int = 256
) -> torch.Tensor:
    """bitsandbytes' nested dequantization of the absmax (float32, (nb,))."""
    _check_stats(qabsmax.numel(), blocksize, absmax2, "absmax2")
    absmax = bnbf.dequantize_blockwise(
        qabsmax, absmax=absmax2, code=dynamic_codebook(), blocksize=blocksize
    )
    return absmax + offset


def int8_vectorwise_quantize(
    x: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bitsandbytes.functional.int8_vectorwise_quant`` (it edits its input; we pass a copy).

    Returns:
        ``(q, absmax, outlier_cols)``: int8 (T, C), float32 (T,), int64 (always a tensor).
    """
    _check_float(x, "x")
    rows = x.float().reshape(-1, x.shape[-1]).clone()  # (T, C)
    q, absmax, cols = bnbf.int8_vectorwise_quant(rows, threshold=threshold)
    cols = torch.empty(0, dtype=torch.long) if cols is None else cols
    return q.reshape(x.shape), absmax, cols


def int8_linear(x: torch.Tensor, weight: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8() matmul with bitsandbytes' kernels (what ``Linear8bitLt`` runs in inference).

    Returns:
        float32 (..., O).
    """
    _check_int8_linear(x, weight)  # bitsandbytes would quantize a NaN weight silently
    rows = x.float().reshape(-1, x.shape[-1])  # (T, C)
    qx, sx, cols = int8_vectorwise_quantize(rows, threshold)
    qw, sw, _ = bnbf.int8_vectorwise_quant(weight.float().contiguous())  # (O, C), (O,)
    out, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(rows, qx, qw, sx, sw, cols, None)
    return out.reshape(*x.shape[:-1], weight.shape[0])
