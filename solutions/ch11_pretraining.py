"""Solutions to the exercises of chapter 11 (pretraining). Try them first."""

from __future__ import annotations

import math

import torch


def apply_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding in the "rotate half" layout. x: (B, H, T, Dh)."""
    _, _, T, Dh = x.shape
    inv_freq = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float32) / Dh)  # (Dh/2,)
    angle = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq  # (T, Dh/2)
    cos, sin = angle.cos(), angle.sin()
    first, second = x[..., : Dh // 2], x[..., Dh // 2 :]  # (B, H, T, Dh/2) each
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: float) -> torch.Tensor:
    """Causal attention with RoPE on queries and keys, not values. q, k, v: (B, H, T, Dh)."""
    q, k = apply_rope(q, theta), apply_rope(k, theta)
    T = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, T, Dh)
