"""GPTQ with llm-compressor (vLLM's maintained quantization library): its ``quantize_weight``
is the column loop of GPTQ with lazy block updates (the paper's section 3.4), on the grid that
compressed-tensors' ``calculate_qparams`` computes. The same public names as ``naive.py``;
``hessian``, ``rtn_quantize`` and ``layer_rel_error`` are shared (not library features).

llm-compressor 0.14 declares ``transformers<=5.17``; the course installs it with ``--no-deps``
next to its own transformers (only the torch code below is used, which runs on a CPU)."""

from __future__ import annotations

import os

import torch

from .naive import (
    NOT_INVERTIBLE,
    GPTQResult,
    check_hessian,
    check_weight,
    minmax_grid,
)
from .naive import hessian as hessian
from .naive import layer_rel_error as layer_rel_error
from .naive import rtn_quantize as rtn_quantize


def _args(bits: int, group_size: int, act_order: bool):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=False,
        strategy="group",
        group_size=group_size,
        actorder="weight" if act_order else None,
    )


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    h: torch.Tensor,
    bits: int = 4,
    group_size: int = 32,
    act_order: bool = False,
    percdamp: float = 0.01,
) -> GPTQResult:
    """Quantize ``weight (out, in)`` given ``h (in, in)`` with llm-compressor's GPTQ.

    Raises:
        ValueError: as the naive twin; in particular where llm-compressor cannot invert the
            damped ``h`` and falls back to round-to-nearest for the layer (it returns a flag
            that says so; its answer would not be GPTQ's).
    """
    check_weight(weight, bits, group_size, max_bits=8)  # uint8 codes, as the naive twin
    check_hessian(h, weight.shape[1], percdamp)
    # llm-compressor logs a "no accelerator" warning as it loads: a CPU is what we mean here
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    args = _args(bits, group_size, act_order)
    minmax_grid(weight, bits, group_size)  # the same group_size check as the naive twin
    groups = weight.to(torch.float32).reshape(weight.shape[0], -1, group_size)  # (out, G, g)
    scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)  # signed zero
    q, _, used_rtn_fallback = quantize_weight(
        weight.to(torch.float32)[None].clone(),  # the library works in place
        h.to(torch.float32)[None].clone(),
        scale[None],
        zero[None],
        None,
        args,
        percdamp=percdamp,
    )
    if bool(used_rtn_fallback.any()):  # llm-compressor's flag: its answer is not GPTQ's
        raise ValueError(NOT_INVERTIBLE.format(percdamp=percdamp))
    q = q[0]  # (out, in) dequantized
    expand = torch.arange(weight.shape[1]) // group_size  # column -> group
    offset = 2 ** (bits - 1)  # compressed-tensors' codes are signed: -8..7 for 4 bits
    codes = torch.round(q / scale[:, expand]) + zero[:, expand] + offset
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(len(h))
    return GPTQResult(q, codes.to(torch.uint8), scale, zero.to(torch.float32) + offset, perm)
