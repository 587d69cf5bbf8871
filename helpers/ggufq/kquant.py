"""Q4_K, llama.cpp's 4-bit "k-quant", written out in torch (``naive.quantize_q4_k``).

A *super-block* of 256 values is cut into 8 sub-blocks of 32. Each sub-block gets its own
scale and minimum, ``x ~ d_j * q - m_j`` with 4-bit codes ``q`` in 0..15; the 8 scales and the
8 minimums are themselves quantized to 6 bits against one fp16 ``d`` and one fp16 ``dmin`` per
super-block. Bytes per super-block (ggml's ``block_q4_K``): ``d``, ``dmin`` (2 + 2), 12 bytes
of packed 6-bit scales and minimums, 128 bytes of codes: 144 bytes, 4.5 bits per weight.

The steps follow ggml's reference quantizer (``quantize_row_q4_K_ref`` and
``make_qkx2_quants`` in ``ggml-quants.c``), with all sub-blocks of a tensor at once:

1. per sub-block, importance weights ``w = rms(x) + |x|``; a search over 21 candidate grids
   (``(14 + 0.1 k) / (max - min)``, k = 0..20), each followed by the weighted least-squares
   fit of ``scale * q + min`` (``min <= 0``), keeping the best weighted squared error;
2. per super-block, the 8 scales and the 8 ``-min`` to 6 bits: ``ls = round(63 s / max s)``;
3. the codes again, on the grid those rounded numbers give: ``q = round((x + dm) / d)``.

ggml rounds with ``nearest_int`` (a float trick that rounds halves to even, like
``torch.round``). Its C sums run left to right (and the compiler may fuse multiply-adds), torch
sums in another order, so a near tie can go the other way: parity with ggml's own quantizer is
measured, not assumed (``tests/test_ggufq.py``).
"""

from __future__ import annotations

import torch

from helpers.checks import finite_tensor

from .blocks import QK_K, check_scales

SUB = 32  # values per sub-block


def _fit(x: torch.Tensor, w: torch.Tensor, iscale: torch.Tensor, low: torch.Tensor):
    """One candidate of the search: codes, least-squares scale and min, weighted error."""
    codes = torch.round(iscale * (x - low)).clamp(0, 15)  # (n, 32)
    sum_w, sum_x = w.sum(1, keepdim=True), (w * x).sum(1, keepdim=True)
    sum_l, sum_l2 = (w * codes).sum(1, keepdim=True), (w * codes * codes).sum(1, keepdim=True)
    sum_xl = (w * codes * x).sum(1, keepdim=True)
    det = sum_w * sum_l2 - sum_l * sum_l  # (n, 1)
    scale = (sum_w * sum_xl - sum_x * sum_l) / det
    offset = (sum_l2 * sum_x - sum_l * sum_xl) / det
    positive = offset > 0  # the minimum must stay <= 0: refit the scale alone
    scale = torch.where(positive, sum_xl / sum_l2, scale)
    offset = torch.where(positive, torch.zeros_like(offset), offset)
    err = (w * (scale * codes + offset - x) ** 2).sum(1, keepdim=True)
    return codes, scale, offset, err, det > 0


def _candidate(step: int) -> torch.Tensor:
    """``rmin + rdelta * step + nmax`` in fp32, as ggml computes it (-1, 0.1, 15)."""
    rmin, rdelta = torch.tensor(-1.0), torch.tensor(0.1)  # fp32 scalars
    return rmin + rdelta * step + 15


def sub_block_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_qkx2_quants(32, 15, ..., rmin=-1, rdelta=0.1, nstep=20)`` for sub-blocks
    ``x (n, 32)``: returns codes (n, 32), scales (n, 1) and ``-min`` (n, 1).

    The search is sequential, as in ggml: once a candidate wins, the next candidates are
    measured from *its* minimum (``iscale = c / (max - min)``, codes of ``x - min``)."""
    w = (x * x).mean(1, keepdim=True).sqrt() + x.abs()  # importance of each value
    low, high = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True)
    flat = high == low
    span = torch.where(flat, torch.ones_like(high), high - low)  # flat: no division by 0
    scale, offset = 1 / (15 / span), low
    codes = torch.round(15 / span * (x - low)).clamp(0, 15)
    best = (w * (scale * codes + offset - x) ** 2).sum(1, keepdim=True)
    for step in range(21):
        span = torch.where(flat, torch.ones_like(high), high - offset)
        cand = _fit(x, w, _candidate(step) / span, offset)
        better = cand[4] & (cand[3] < best)  # (n, 1)
        codes = torch.where(better, cand[0], codes)
        scale = torch.where(better, cand[1], scale)
        offset = torch.where(better, cand[2], offset)
        best = torch.where(better, cand[3], best)
    return torch.where(flat, 0, codes), torch.where(flat, 0, scale), -offset


def _six_bits(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8 non-negative numbers per super-block ``(n, 8)`` -> 6-bit codes and the fp32 value of
    their fp16 step ``max / 63`` (n, 1), as ggml stores it."""
    top = values.amax(1, keepdim=True)
    top = torch.where(top > 0, top, torch.zeros_like(top))  # ggml starts its max at +0.0
    inv = torch.where(top > 0, 63 / top, torch.zeros_like(top))
    codes = torch.round(inv * values).clamp(max=63)
    return codes, (top / 63).to(torch.float16).to(torch.float32)


def _pack_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """6-bit scales and minimums (n, 8) -> ggml's 12 bytes (n, 12): sub-blocks 0-3 whole in
    bytes 0-3 (scales) and 4-7 (minimums); sub-blocks 4-7 split into low nibbles (bytes 8-11)
    and their top 2 bits in the spare top bits of bytes 0-7."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    low = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)  # (n, 4)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    high = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return torch.cat([low, mid, high], dim=1)


def quantize_q4_k(weight: torch.Tensor) -> torch.Tensor:
    """Q4_K bytes of ``weight (..., cols)``, ``cols % 256 == 0``: ``uint8 (..., cols // 256 *
    144)``; per super-block ``d``, ``dmin`` (fp16), 12 bytes of scales, 128 bytes of codes."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {type(weight).__name__}")
    if weight.ndim < 1 or weight.shape[-1] % QK_K:
        raise ValueError(
            f"Q4_K needs rows of whole super-blocks of {QK_K}, got shape {tuple(weight.shape)}; "
            "llama.cpp stores such tensors in another type (see llama-quant.cpp)"
        )
    finite_tensor(weight, "weight")  # ggml's search would turn a NaN into code 0 silently
    x = weight.detach().to(torch.float32).reshape(-1, SUB)  # (n_sub, 32)
    codes, scales, mins = sub_block_fit(x)
    n = x.shape[0] // 8
    ls, d = _six_bits(scales.reshape(n, 8))  # (n, 8), (n, 1)
    lm, dmin = _six_bits(mins.reshape(n, 8))
    step = (d * ls).reshape(-1, 1)  # (n_sub, 1): the sub-block scales as stored
    shift = (dmin * lm).reshape(-1, 1)
    again = torch.round((x + shift) / step).clamp(0, 15)
    codes = torch.where(step == 0, codes, again).reshape(n, 4, 2, SUB)  # 64-value chunks
    packed = (codes[:, :, 0] + 16 * codes[:, :, 1]).to(torch.uint8).reshape(n, 128)
    halves = torch.cat([d, dmin], dim=1).to(torch.float16).view(torch.uint8)  # (n, 4)
    out = torch.cat([halves, _pack_scales(ls, lm), packed], dim=1)  # (n, 144)
    return check_scales(out, "Q4_K").reshape(*weight.shape[:-1], -1)
