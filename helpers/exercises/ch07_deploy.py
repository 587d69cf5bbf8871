"""Checkers for chapter 07 (deploy). Each raises AssertionError with a hint when wrong."""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants


def _q8_0_blocks() -> torch.Tensor:
    """Test blocks (69, 32): random, halves that tie after scaling, all zero, negative max,
    then 64 random blocks. The codes use the fp32 scale, the stored d is its fp16 rounding:
    codes computed with the fp16 d differ from gguf's on about one random block in five (40,845
    of 200,000 standard-normal blocks, numpy seed 0), so 64 blocks catch that mistake (a test
    checks it)."""
    gen = torch.Generator().manual_seed(6)
    blocks = torch.randn(69, 32, generator=gen)
    blocks[1] = torch.arange(32, dtype=torch.float32) - 16.5  # x/d lands on many .5 ties
    blocks[1, 0] = 127.0  # d = 1 exactly: ties stay ties
    blocks[2] = 0.0
    blocks[3, 4] = -9.0
    return blocks


def check_q8_0_block(fn: Callable) -> None:
    """``fn(x (32,)) -> (d, q (32,) int8)`` equals llama.cpp's Q8_0 block."""
    for index, block in enumerate(_q8_0_blocks()):
        ref = gguf_quants.quantize(block.numpy()[None], GGMLQuantizationType.Q8_0)[0]
        d_ref = float(ref[:2].view("float16")[0])
        q_ref = torch.from_numpy(ref[2:].view("int8").copy())
        d, q = fn(block.clone())
        assert abs(float(d) - d_ref) <= 0, (
            f"block {index}: scale {float(d)} but llama.cpp stores {d_ref}: d = max|x| / 127, "
            "rounded to fp16 for storage"
        )
        q = torch.as_tensor(q)
        assert q.shape == (32,), f"block {index}: q must have shape (32,), got {tuple(q.shape)}"
        wrong = (q.to(torch.int16) != q_ref.to(torch.int16)).nonzero().flatten().tolist()
        assert not wrong, (
            f"block {index}: codes differ at positions {wrong[:5]}. The codes use the fp32 "
            "scale (only the stored d is rounded to fp16); halves round away from zero in C's "
            "roundf (torch.round sends them to even); an all-zero block has codes 0."
        )


def check_bits_per_weight(fn: Callable) -> None:
    """``fn(name) -> float`` is the stored bits per weight, scales included."""
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K", "Q2_K"):
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        expected = nbytes * 8 / block
        got = float(fn(name))
        assert abs(got - expected) < 1e-9, (
            f"{name}: expected {expected} bits per weight, got {got}. A block of {block} "
            f"values takes {nbytes} bytes, scales included."
        )
