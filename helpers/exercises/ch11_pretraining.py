"""Checkers for the exercises of chapter 11 (pretraining: BPE, a small Llama, FSDP offload).

Each takes the learner's function and raises AssertionError with a hint when it is wrong. The
reference is the naive Llama twin (``helpers.llama.naive``), itself checked against
transformers' ``LlamaForCausalLM`` (tests/test_llama.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from helpers.llama import naive

# (batch, heads, tokens, head_dim, theta): the base Llama 2 uses, and Llama 3's (500,000), so an
# answer that ignores ``theta`` fails; odd token counts and several head sizes.
CASES = [(2, 3, 7, 8, 10_000.0), (1, 2, 9, 16, 500_000.0), (3, 1, 5, 4, 100.0)]
TOLERANCE = 1e-5  # fp32 rounding of sin, cos and a few products


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as transformers' Llama applies it ("rotate half"). x: (B, H, T, Dh)."""
    cos, sin = naive.rope_cos_sin(x.shape[2], x.shape[3], theta)  # (T, Dh) each
    return naive.apply_rope(x, cos, sin)


def _interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """The other convention (the RoPE paper's, and Meta's original code): pairs (x0, x1),
    (x2, x3), ... Right in itself, but not the layout of transformers' Llama weights."""
    B, H, T, Dh = x.shape
    cos, sin = naive.rope_cos_sin(T, Dh, theta)
    cos, sin = cos[:, : Dh // 2], sin[:, : Dh // 2]  # (T, Dh/2): one angle per pair
    pairs = x.reshape(B, H, T, Dh // 2, 2)  # (B, H, T, Dh/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.reshape(B, H, T, Dh)


def reference_attention(q, k, v, theta: float, rope_values: bool = False, causal: bool = True):
    """Causal attention with RoPE on the queries and keys. q, k, v: (B, H, T, Dh)."""
    q, k = reference_rope(q, theta), reference_rope(k, theta)
    if rope_values:
        v = reference_rope(v, theta)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if causal:
        scores = scores + naive.causal_mask(q.shape[2])
    return scores.softmax(dim=-1) @ v  # (B, H, T, Dh)


def _inputs(case, seed: int, n: int = 1) -> list[torch.Tensor]:
    B, H, T, Dh, _ = case
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, Dh, generator=generator) for _ in range(n)]


def _close(got, expected) -> bool:
    got = torch.as_tensor(got)
    return got.shape == expected.shape and torch.allclose(
        got.float(), expected, atol=TOLERANCE, rtol=TOLERANCE
    )


def check_apply_rope(fn: Callable, seed: int = 0) -> None:
    """``fn(x, theta)`` must rotate each (x[..., i], x[..., i + Dh/2]) pair of a
    (B, H, T, Dh) tensor by ``position * theta ** (-2i / Dh)``."""
    for number, case in enumerate(CASES):
        (x,) = _inputs(case, seed + number)
        theta = case[-1]
        got = fn(x.clone(), theta)
        expected = reference_rope(x, theta)
        if _close(got, expected):
            continue  # right: checked first, so a right answer is never called wrong
        assert torch.as_tensor(got).shape == x.shape, (
            f"return a tensor of the input's shape {tuple(x.shape)}, got "
            f"{tuple(torch.as_tensor(got).shape)}"
        )
        assert not _close(got, _interleaved_rope(x, theta)), (
            "you rotated adjacent pairs (x0, x1), (x2, x3), ...: that is the RoPE paper's "
            "layout, but transformers' Llama pairs x[i] with x[i + head_dim/2] (rotate_half)"
        )
        for other in (10_000.0, 500_000.0):
            if other != theta:
                assert not _close(got, reference_rope(x, other)), (
                    f"your angles use the base {other:g}, not the theta passed ({theta:g})"
                )
        raise AssertionError(
            f"for x of shape {tuple(x.shape)} and theta {theta:g}, the largest difference from "
            f"the reference is {(torch.as_tensor(got).float() - expected).abs().max():.3g}: the "
            "angle of pair i at position t is t * theta ** (-2i / head_dim); x * cos + "
            "rotate_half(x) * sin, with cos and sin of each angle written twice side by side"
        )


def check_rope_attention(fn: Callable, seed: int = 0) -> None:
    """``fn(q, k, v, theta)`` must be causal attention (scaled by 1/sqrt(Dh)) with RoPE on the
    queries and the keys only. q, k, v: (B, H, T, Dh)."""
    for number, case in enumerate(CASES):
        q, k, v = _inputs(case, seed + 100 + number, 3)
        theta = case[-1]
        got = fn(q.clone(), k.clone(), v.clone(), theta)
        if _close(got, reference_attention(q, k, v, theta)):
            continue
        assert not _close(got, reference_attention(q, k, v, theta, rope_values=True)), (
            "you rotated the values too: RoPE encodes positions in the query-key dot product "
            "only (so that it depends on the offset between them); the values are mixed as "
            "they are"
        )
        assert not _close(got, reference_attention(q, k, v, theta, causal=False)), (
            "no causal mask: position t must not attend to positions after t"
        )
        raise AssertionError(
            f"for q, k, v of shape {tuple(q.shape)}, the output differs from causal attention "
            "with RoPE on q and k: rotate q and k (not v), scores = q k^T / sqrt(head_dim), "
            "mask the future with -inf, softmax over the keys, then weight v"
        )
