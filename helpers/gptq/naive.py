"""GPTQ by hand, for one linear layer ``y = x W^T`` with ``W (out, in)``.

1. Calibration: the inputs ``X (n, in)`` the layer sees on sample text give the Hessian of the
   layer's squared output error, ``H = 2 X^T X / n`` (in, in).
2. Quantization grid: asymmetric min-max per row and group of ``group_size`` input columns,
   ``scale = (max - min) / (2^bits - 1)``, ``zero = round(-min / scale)``; a weight's code is
   ``clamp(round(w / scale) + zero, 0, 2^bits - 1)`` and its value ``scale * (code - zero)``.
   The grid is fixed from the original weights before the loop ("static groups"), as
   llm-compressor does; the paper's reference code can instead set each group's grid when the
   loop reaches it, on the already-updated weights.
3. Column by column (optionally in order of decreasing ``diag(H)``: "act-order"), quantize
   column ``i`` and spread its error over the columns not yet quantized, ``W[:, j] -= e *
   U[i, j] / U[i, i]`` for ``j > i``, where ``U`` is the upper Cholesky factor of ``H^-1``
   (paper, section 3, "Cholesky reformulation"). ``H`` is first damped by 1 % of its mean
   diagonal so that the inverse is stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.checks import bits as check_bits
from helpers.checks import finite_tensor, positive_number, whole_number


@dataclass
class GPTQResult:
    """One quantized layer. ``weight``: dequantized (out, in); ``codes``: uint8 (out, in);
    ``scale``, ``zero``: (out, in // group_size); ``perm``: the column order used (in,)."""

    weight: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    perm: torch.Tensor


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``2 X^T X / n`` of calibration inputs ``(..., in)`` -> ``(in, in)`` fp32.

    Raises:
        ValueError: no calibration rows (``n = 0`` would divide 0 by 0), or a NaN or inf
            input (it would make the whole Hessian NaN).
    """
    check_inputs(inputs)
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)  # (n, in)
    return 2 * x.T @ x / x.shape[0]  # (in, n) @ (n, in) -> (in, in)


def check_inputs(inputs: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """Calibration inputs ``(..., in)``: finite, with at least one row of at least one feature."""
    finite_tensor(inputs, name, allow_empty=True)
    if inputs.ndim < 2 or inputs.numel() == 0:
        raise ValueError(
            f"{name} must hold calibration rows (n, in) with n >= 1, got shape "
            f"{tuple(inputs.shape)}: run the model on some calibration text first"
        )
    return inputs


def check_weight(weight: torch.Tensor, bits: int, group_size: int, max_bits: int = 16) -> None:
    """A finite 2-D weight (out, in), a code width of 2 to ``max_bits`` bits (8 where codes are
    stored in uint8, 16 where the rounded weight comes back in floating point), groups that
    divide ``in``."""
    finite_tensor(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    check_bits(bits, high=max_bits)
    whole_number(group_size, "group_size")
    if weight.shape[1] % group_size:
        raise ValueError(f"group_size {group_size} must divide in_features {weight.shape[1]}")


def minmax_grid(weight: torch.Tensor, bits: int, group_size: int):
    """Asymmetric min-max grid per row and group: ``scale, zero`` of shape (out, in // g)."""
    check_weight(weight, bits, group_size)
    out_features, in_features = weight.shape
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"group_size {group_size} must divide in_features {in_features}")
    groups = weight.to(torch.float32).reshape(out_features, -1, group_size)  # (out, G, g)
    low = groups.amin(-1).clamp(max=0)  # 0 must be representable
    high = groups.amax(-1).clamp(min=0)  # (out, G), as low
    scale = (high - low) / (2**bits - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group
    return scale, torch.round(-low / scale)


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int):
    """Codes and dequantized values of one column ``w (out,)`` on its grid ``(out,)``."""
    codes = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return codes, scale * (codes - zero)


def _inverse_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1``; a ValueError if ``H + damp I`` is not
    positive definite (llm-compressor then falls back to round-to-nearest: see library.py)."""
    h = h + percdamp * torch.diagonal(h).mean() * torch.eye(
        h.shape[0], dtype=h.dtype, device=h.device
    )
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(NOT_INVERTIBLE.format(percdamp=percdamp)) from None


NOT_INVERTIBLE = (
    "h, damped by percdamp={percdamp}, is not positive definite, so GPTQ cannot invert it "
    "(llm-compressor would fall back to round-to-nearest): raise percdamp, calibrate on more "
    "tokens, or check that h came from hessian()"
)


def check_hessian(h: torch.Tensor, in_features: int, percdamp: float) -> None:
    """A finite (in, in) Hessian and a damping fraction of 0 or more."""
    finite_tensor(h, "h")
    if h.shape != (in_features, in_features):
        raise ValueError(f"h must be ({in_features}, {in_features}), got {tuple(h.shape)}")
    positive_number(percdamp, "percdamp", allow_zero=True)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    h: torch.Tensor,
    bits: int = 4,
    group_size: int = 32,
    act_order: bool = False,
    percdamp: float = 0.01,
) -> GPTQResult:
    """Quantize ``weight (out, in)`` with GPTQ given the Hessian ``h (in, in)``.

    Raises:
        ValueError: a NaN or inf in ``weight`` or ``h``, ``bits`` outside 2..8 (the codes
            are uint8), a ``group_size`` that does not divide ``in``, or an ``h`` that damping
            does not make invertible.
    """
    check_weight(weight, bits, group_size, max_bits=8)
    check_hessian(h, weight.shape[1], percdamp)
    scale, zero = minmax_grid(weight, bits, group_size)  # (out, G) each
    w, h = weight.to(torch.float32).clone(), h.to(torch.float32).clone()
    dead = torch.diagonal(h) == 0  # inputs that are always 0: their weights do not matter
    h[dead, dead], w[:, dead] = 1.0, 0.0
    order = torch.arange(len(h), device=h.device)
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else order
    w, h = w[:, perm], h[perm][:, perm]  # columns in quantization order
    u = _inverse_cholesky(h, percdamp)  # (in, in) upper triangular
    codes = torch.zeros_like(w)
    for i in range(w.shape[1]):
        group = perm[i] // group_size  # the grid belongs to the original column
        codes[:, i], q = quantize_column(w[:, i], scale[:, group], zero[:, group], bits)
        err = (w[:, i] - q) / u[i, i]  # (out,)
        w[:, i:] -= err[:, None] * u[i, i:][None, :]  # column i becomes q; later ones absorb
    inverse = torch.argsort(perm)
    return GPTQResult(w[:, inverse], codes[:, inverse].to(torch.uint8), scale, zero, perm)


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """Round-to-nearest on the same grid (no error feedback): the baseline GPTQ improves on.
    The result is the dequantized weight in float32, so ``bits`` may go from 2 to 16."""
    scale, zero = minmax_grid(weight, bits, group_size)
    g = group_size
    w = weight.to(torch.float32).reshape(weight.shape[0], -1, g)  # (out, G, g)
    # (out, G, g): scale and zero (out, G) broadcast over each group
    codes = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], 0, 2**bits - 1)
    # (out, G, g) -> (out, in)
    return (scale[..., None] * (codes - zero[..., None])).reshape(weight.shape)


def layer_rel_error(weight_q: torch.Tensor, weight: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||X Wq^T - X W^T||_F / ||X W^T||_F`` on inputs ``(..., in)``."""
    finite_tensor(weight_q, "weight_q")
    finite_tensor(weight, "weight")
    check_inputs(inputs)
    if weight_q.shape != weight.shape or inputs.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"weight_q {tuple(weight_q.shape)}, weight {tuple(weight.shape)} and inputs "
            f"{tuple(inputs.shape)} do not fit: weights (out, in), inputs (..., in)"
        )
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)  # (n, in)
    ref = x @ weight.to(torch.float32).T  # (n, out)
    if float(ref.norm()) == 0:
        raise ValueError("the layer's output X W^T is all zero on these inputs: no relative error")
    return float((x @ weight_q.to(torch.float32).T - ref).norm() / ref.norm())
