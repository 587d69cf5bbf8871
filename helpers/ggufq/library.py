"""GGUF block quantization with the ``gguf`` package (llama.cpp's own Python package), whose
``gguf.quants`` ships numpy reference quantizers written to be bit-exact with ggml's C. The
same public names as ``naive.py``; tensors in, tensors out."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from .naive import BLOCK_SIZE, BYTES_PER_BLOCK, _check_weight, _split, bits_per_weight

__all__ = [
    "BLOCK_SIZE",
    "BYTES_PER_BLOCK",
    "bits_per_weight",
    "dequantize_q4_0",
    "dequantize_q8_0",
    "quantize_q4_0",
    "quantize_q8_0",
]


def _quantize(weight: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    _check_weight(weight)
    array = weight.detach().to(torch.float32).numpy()
    return torch.from_numpy(np.ascontiguousarray(gguf_quants.quantize(array, qtype)))


def _dequantize(data: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    _split(data, qtype.name)  # the same shape and dtype checks as the naive twin
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
