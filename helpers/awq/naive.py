"""AWQ's scale search by hand, for one linear layer ``y = x W^T``, ``W (out, in)``.

For calibration inputs ``X (n, in)``, ``s_x = mean |X|`` per input channel. For each ratio
``a`` on a grid of ``n_grid`` values in [0, 1]:

- scales ``s = s_x^a`` (or, with ``duo_scaling``, ``s_x^a / s_w^(1-a)`` where ``s_w`` is the
  mean of each column's weight magnitude normalised by its group's max, as llm-compressor
  does), normalised by ``sqrt(max(s) min(s))`` so they straddle 1;
- the layer becomes ``Q(W diag(s)) diag(s)^-1``: quantize the scaled weight with plain
  round-to-nearest on the group grid, divide the scale back out;
- its error is the mean squared output difference on ``X``.

The ratio with the lowest error wins (``a = 0`` is plain round-to-nearest, so AWQ can only
help on the calibration data). In a model ``diag(s)^-1`` is folded into the RMSNorm weight
(or the previous linear layer) in front, so inference costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.gptq.naive import layer_rel_error, rtn_quantize

__all__ = ["AWQResult", "awq_quantize", "layer_rel_error", "search_grid"]


@dataclass
class AWQResult:
    """``weight``: the effective dequantized weight ``Q(W s) / s`` (out, in); ``scales``:
    (in,); ``ratio``: the chosen exponent; ``errors``: the loss at each grid ratio."""

    weight: torch.Tensor
    scales: torch.Tensor
    ratio: float
    errors: list[float]


def search_grid(n_grid: int) -> list[float]:
    """The ratios tried: ``n_grid`` evenly spaced values from 0 to 1 inclusive."""
    if n_grid < 2:
        raise ValueError(f"n_grid must be at least 2, got {n_grid}")
    return [i / (n_grid - 1) for i in range(n_grid)]


def _weight_means(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |W| normalised by each group's max: (in,)."""
    w = weight.abs().reshape(-1, group_size)  # (out * G, g)
    return (w / (w.amax(1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


@torch.no_grad()
def awq_quantize(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    bits: int = 4,
    group_size: int = 32,
    n_grid: int = 20,
    duo_scaling: bool = False,
) -> AWQResult:
    """Search AWQ's per-channel scales for ``weight (out, in)`` on ``inputs (..., in)``."""
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)  # (n, in)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features, weight expects {weight.shape[1]}")
    w = weight.to(torch.float32)
    x_mean = x.abs().mean(0)  # (in,)
    w_mean = _weight_means(w, group_size) if duo_scaling else None
    reference = x @ w.T  # (n, out)
    best, errors = None, []
    for ratio in search_grid(n_grid):
        s = (
            x_mean.pow(ratio)
            if w_mean is None
            else x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)
        )
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # (in,), centred on 1 in log scale
        effective = rtn_quantize(w * s, bits, group_size) / s  # Q(W s) s^-1
        errors.append(float(((x @ effective.T - reference) ** 2).mean()))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], ratio, s, effective)
    return AWQResult(best[3], best[2], best[1], errors)
