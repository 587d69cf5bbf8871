"""Solutions to chapter 07's exercises."""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["bits_per_weight", "q8_0_block"]


def q8_0_block(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One Q8_0 block: ``(d as stored in fp16, 32 int8 codes)``."""
    d = x.abs().max() / 127  # fp32: the codes use it; only the stored d is rounded to fp16
    inv = 1 / d if d != 0 else torch.zeros(())
    v = (x * inv).abs()
    # halves away from zero, as C's roundf; floor(v + 0.5) would round v = 0.49999997 up
    # (v + 0.5 is 1.0 in fp32), so add floor(2 * fraction) instead
    q = (x * inv).sign() * (v.floor() + (2 * (v - v.floor())).floor())
    return float(d.to(torch.float16)), q.to(torch.int8)


def bits_per_weight(type_name: str) -> float:
    """Stored bits per weight of a GGUF type, scales included."""
    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return nbytes * 8 / block
