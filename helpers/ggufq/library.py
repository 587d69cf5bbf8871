"""GGUF block quantization with llama.cpp's own code: Q8_0 and Q4_0 through the ``gguf``
package (llama.cpp's Python package), whose ``gguf.quants`` ships numpy reference quantizers
written to be bit-exact with ggml's C; Q4_K, which ``gguf`` can only dequantize, through ggml's
C function ``quantize_row_q4_K_ref`` in the ``libggml-base`` that ``llama-cpp-python`` ships (the
function llama.cpp's quantizer uses when it has no importance matrix). The same public names as
``naive.py``; tensors in, tensors out. ``llama_quantize`` runs llama.cpp's whole-file quantizer
(its mixes such as Q4_K_M, and its fallbacks for rows that are not whole super-blocks)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from helpers.checks import finite_tensor

from .blocks import BLOCK_SIZE as BLOCK_SIZE
from .blocks import (
    BYTES_PER_BLOCK,
    check_scales,
    check_weight,
    split_blocks,
)
from .blocks import VALUES_PER_BLOCK as VALUES_PER_BLOCK
from .naive import bits_per_weight as bits_per_weight


def _quantize(weight: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    check_weight(weight)
    array = weight.detach().to(torch.float32).numpy()
    with np.errstate(over="ignore"):  # an fp16 scale overflow is refused just below
        out = torch.from_numpy(np.ascontiguousarray(gguf_quants.quantize(array, qtype)))
    return check_scales(out, qtype.name)


def _dequantize(data: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    split_blocks(data, qtype.name)  # the same shape and dtype checks as the naive twin
    return torch.from_numpy(gguf_quants.dequantize(data.numpy(), qtype).astype(np.float32))


def quantize_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes of ``weight (..., cols)``: ``uint8 (..., cols // 32 * 34)``."""
    return _quantize(weight, GGMLQuantizationType.Q8_0)


def quantize_q4_0(weight: torch.Tensor) -> torch.Tensor:
    """Q4_0 bytes of ``weight (..., cols)``: ``uint8 (..., cols // 32 * 18)``."""
    return _quantize(weight, GGMLQuantizationType.Q4_0)


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes ``(..., n * 34)`` -> fp32 ``(..., n * 32)``."""
    return _dequantize(data, GGMLQuantizationType.Q8_0)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """Q4_0 bytes ``(..., n * 18)`` -> fp32 ``(..., n * 32)``."""
    return _dequantize(data, GGMLQuantizationType.Q4_0)


@functools.cache
def _ggml() -> ctypes.CDLL:
    """ggml's base library as shipped inside llama-cpp-python."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.quantize_row_q4_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.quantize_row_q4_K_ref.restype = None
    return lib


def quantize_q4_k(weight: torch.Tensor) -> torch.Tensor:
    """Q4_K bytes of ``weight (..., cols)``, ``cols % 256 == 0``, by ggml's C reference:
    ``uint8 (..., cols // 256 * 144)``."""
    from .kquant import QK_K

    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {type(weight).__name__}")
    if weight.ndim < 1 or weight.shape[-1] % QK_K:
        raise ValueError(
            f"Q4_K needs rows of whole super-blocks of {QK_K}, got {tuple(weight.shape)}"
        )
    finite_tensor(weight, "weight")  # ggml's C would turn a NaN into code 0 silently
    src = np.ascontiguousarray(weight.detach().to(torch.float32).numpy())
    out = np.zeros(src.size // QK_K * BYTES_PER_BLOCK["Q4_K"], dtype=np.uint8)
    _ggml().quantize_row_q4_K_ref(src.ctypes.data, out.ctypes.data, src.size)
    return check_scales(torch.from_numpy(out), "Q4_K").reshape(*weight.shape[:-1], -1)


def dequantize_q4_k(data: torch.Tensor) -> torch.Tensor:
    """Q4_K bytes ``(..., n * 144)`` -> fp32 ``(..., n * 256)`` (the gguf package's numpy)."""
    if data.dtype != torch.uint8 or data.shape[-1] % BYTES_PER_BLOCK["Q4_K"]:
        raise ValueError(
            f"Q4_K data must be uint8 (..., n * 144), got {data.dtype} {tuple(data.shape)}"
        )
    values = gguf_quants.dequantize(data.numpy(), GGMLQuantizationType.Q4_K)
    return torch.from_numpy(values.astype(np.float32))


def llama_quantize(src: str | Path, dst: str | Path, ftype: str = "Q4_K_M") -> tuple[Path, str]:
    """llama.cpp's quantizer (``llama_model_quantize``, what ``llama-quantize`` runs) from an F32
    or F16 GGUF ``src`` to ``dst`` with the file type ``ftype`` (``"Q4_K_M"``, ``"Q4_K_S"``,
    ``"Q8_0"``, ...). Returns ``(dst, llama.cpp's log)``; the log lists its fallbacks."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}", None)
    if code is None:
        raise ValueError(f"unknown llama.cpp file type {ftype!r} (e.g. 'Q4_K_M', 'Q8_0')")
    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no GGUF file there")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = code, 2
    buffer = io.StringIO()
    set_verbose(True)  # llama.cpp reports its fallbacks in its log only
    try:
        with contextlib.redirect_stderr(buffer):
            failed = llama_cpp.llama_model_quantize(
                str(src).encode(), str(dst).encode(), ctypes.byref(params)
            )
    finally:
        set_verbose(False)
    if failed:
        Path(dst).unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize failed on {src}: {buffer.getvalue()[-1500:]}")
    return Path(dst), buffer.getvalue()
