"""Checkers for the exercises of chapter 03 (QLoRA).

Each takes the learner's answer and raises AssertionError with a hint when it is wrong. The
references are the course's own helpers, so an exercise checks the idea the chapter built.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from helpers.quantization import naive as quant


def check_merge_weight(fn) -> None:
    """``fn(packed, absmax, shape, lora_A, lora_B, scaling)`` must return the merged float32
    weight dequant(W_nf4) + scaling * B A, shape (OUT, IN)."""
    for out_features, in_features, r in ((64, 128, 4), (96, 64, 8)):
        weight = torch.randn(out_features, in_features) * 0.05
        packed, absmax = quant.quantize_nf4(weight)
        lora_a, lora_b = torch.randn(r, in_features) * 0.1, torch.randn(out_features, r) * 0.1
        scaling = 16 / r
        shape = (out_features, in_features)
        got = fn(packed.clone(), absmax.clone(), shape, lora_a.clone(), lora_b.clone(), scaling)
        assert isinstance(got, torch.Tensor), "return a tensor (the merged weight)"
        assert tuple(got.shape) == shape, f"the merged weight is (OUT, IN) = {shape}"
        base = quant.dequantize_nf4(packed, absmax, shape)
        expected = base + scaling * (lora_b @ lora_a)
        if torch.allclose(got.float(), weight + scaling * (lora_b @ lora_a), atol=1e-6):
            raise AssertionError(
                "that merges into the original weight; the adapter was trained against the "
                "dequantized NF4 weight, so dequantize the codes first"
            )
        assert not torch.allclose(got.float(), base + lora_b @ lora_a, atol=1e-6), (
            "multiply the update B A by scaling (alpha / r)"
        )
        error = (got.float() - expected).abs().max().item()
        assert error < 1e-5, (
            f"off by up to {error:.2e}: dequantize_nf4(packed, absmax, shape) + scaling * B @ A, "
            "in float32, with no re-quantization afterwards"
        )


def check_unscale_gradients(fn) -> None:
    """``fn(scaled_grads, scale)`` must return (float32 gradients divided by scale, found_inf)
    like ``GradScaler.unscale_``."""
    scale = 2.0**16
    true = [torch.randn(50) * 1e-6, torch.randn(3, 7) * 1e-3]
    scaled = [(g * scale).half() for g in true]
    grads, found_inf = fn([g.clone() for g in scaled], scale)
    assert len(grads) == len(scaled), "return one gradient per input gradient"
    for got, s in zip(grads, scaled, strict=True):
        assert got.dtype == torch.float32, (
            "return float32: the optimizer updates fp32 adapters, and dividing in fp16 would "
            "underflow the small gradients the scaling rescued"
        )
        assert torch.equal(got, s.float() / scale), "convert to float32 first, then divide"
    assert found_inf is False or found_inf == 0, "no gradient was inf or NaN here"
    broken = [scaled[0].clone(), scaled[1].clone()]
    broken[1][0, 0] = float("inf")
    _, found_inf = fn(broken, scale)
    assert bool(found_inf), (
        "a gradient holds inf: report it (found_inf = True) so the step is skipped and the "
        "scale lowered"
    )
    broken[1][0, 0] = float("nan")
    _, found_inf = fn(broken, scale)
    assert bool(found_inf), "NaN counts too: check with torch.isfinite"


def check_rng_snapshot(functions) -> None:
    """``functions = (snapshot, restore)``: ``restore(snapshot())`` must replay torch's, Python's
    and NumPy's random numbers."""
    snapshot, restore = functions
    torch.manual_seed(random.randrange(10**6))
    state = snapshot()
    first = (torch.rand(4), random.random(), float(np.random.rand()))
    restore(state)
    second = (torch.rand(4), random.random(), float(np.random.rand()))
    assert torch.equal(first[0], second[0]), "torch's generator did not replay: torch.get_rng_state"
    assert first[1] == second[1], "Python's random did not replay: random.getstate / setstate"
    assert first[2] == second[2], "NumPy did not replay: np.random.get_state / set_state"
