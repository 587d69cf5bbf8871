"""Solutions to chapter 06's exercises."""

from __future__ import annotations

from helpers.gptq.naive import quantize_column

__all__ = ["gptq_step", "quantize_column"]


def gptq_step(w, u, i, scale, zero):
    """Quantize column ``i`` of ``w`` and push its error onto the later columns."""
    w = w.clone()
    _, q = quantize_column(w[:, i], scale, zero, 4)
    err = (w[:, i] - q) / u[i, i]  # (out,)
    w[:, i:] -= err[:, None] * u[i, i:][None, :]
    return w
