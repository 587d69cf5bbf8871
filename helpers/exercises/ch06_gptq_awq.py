"""Checkers for chapter 06 (GPTQ and AWQ). Each raises AssertionError with a hint when wrong."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.gptq import naive as gptq


def check_gptq_step(fn: Callable) -> None:
    """``fn(w, u, i, scale, zero) -> w'``: column i on the grid, later columns corrected."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, generator=gen)
    w = torch.randn(6, 16, generator=gen)
    u = gptq._inverse_cholesky(gptq.hessian(x), 0.01)
    scale, zero = gptq.minmax_grid(w, 4, 16)
    for i in (0, 5, 15):
        before = w.clone()
        got = fn(w, u, i, scale[:, 0], zero[:, 0])
        assert torch.equal(w, before), "the input w was modified in place; work on a copy"
        _, q = gptq.quantize_column(w[:, i], scale[:, 0], zero[:, 0], 4)
        expected = w.clone()
        expected[:, i:] -= ((w[:, i] - q) / u[i, i])[:, None] * u[i, i:][None, :]
        assert torch.allclose(got[:, :i], w[:, :i]), f"step {i}: columns before i must not move"
        assert torch.allclose(got[:, i], q, atol=1e-6), f"step {i}: column i must be on the grid"
        assert torch.allclose(got, expected, atol=1e-5), (
            f"step {i}: the later columns must absorb the error: w[:, j] -= (w_i - q) / U[i, i] "
            "* U[i, j] for j > i"
        )
