"""AWQ's scale search by hand, for one linear layer ``y = x W^T``, ``W (out, in)``.

For calibration inputs ``X (n, in)``, ``s_x = mean |X|`` per input channel. For each point
``(a, duo)`` of the search grid (``search_grid``; ``a`` in [0, 1]):

- scales ``s = s_x^a`` (or, with ``duo``, ``s_x^a / s_w^(1-a)`` where ``s_w`` is the mean of
  each column's weight magnitude normalised by its group's max, as llm-compressor does),
  normalised by ``sqrt(max(s) min(s))`` so they straddle 1;
- the layer becomes ``Q(W diag(s)) diag(s)^-1``: quantize the scaled weight with plain
  round-to-nearest on the group grid, divide the scale back out;
- its error is the mean squared output difference on ``X``.

The point with the lowest error wins (the first point is ``a = 0`` without ``duo``: plain
round-to-nearest, so AWQ can only help on the calibration data). In a model ``diag(s)^-1`` is
folded into the RMSNorm weight (or the previous linear layer) in front, so inference costs
nothing extra. ``awq_layer`` runs the search for one layer of a transformers model, on the
inputs that layer sees on calibration texts (the library twin runs llm-compressor there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from helpers.checks import finite_tensor, whole_number
from helpers.gptq.naive import check_inputs, check_weight, layer_rel_error, rtn_quantize

__all__ = ["AWQResult", "awq_layer", "awq_quantize", "capture_inputs", "layer_rel_error"]
__all__ += ["search_grid"]


@dataclass
class AWQResult:
    """``weight``: the effective dequantized weight ``Q(W s) / s`` (out, in); ``scales``:
    (in,); ``ratio``: the chosen exponent; ``errors``: the loss at each grid point (None where
    the library does not expose them)."""

    weight: torch.Tensor
    scales: torch.Tensor
    ratio: float
    errors: list[float] | None


def search_grid(n_grid: int, duo_scaling: bool = False) -> list[tuple[float, bool]]:
    """The grid points ``(ratio, duo)`` tried, as llm-compressor 0.14 builds them: without
    ``duo_scaling``, ``n_grid`` ratios evenly spaced from 0 to 1; with it, ``(0, False)`` (plain
    round-to-nearest) then ``n_grid - 1`` ratios from 0 to 1 with duo scaling."""
    whole_number(n_grid, "n_grid")
    if n_grid < 2 + duo_scaling:
        raise ValueError(f"n_grid must be at least {2 + duo_scaling}, got {n_grid}")
    if not duo_scaling:
        return [(i / (n_grid - 1), False) for i in range(n_grid)]
    return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]


def _weight_means(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |W| normalised by each group's max: (in,)."""
    w = weight.abs().reshape(-1, group_size)  # (out * G, g)
    return (w / (w.amax(1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


def _scales(x_mean, w_mean, ratio: float, duo: bool) -> torch.Tensor:
    """Per-channel scales (in,) of one grid point, centred on 1 in log scale."""
    s = x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4) if duo else x_mean.pow(ratio)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def awq_quantize(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    bits: int = 4,
    group_size: int = 32,
    n_grid: int = 20,
    duo_scaling: bool = False,
) -> AWQResult:
    """Search AWQ's per-channel scales for ``weight (out, in)`` on ``inputs (..., in)``.

    Raises:
        ValueError: a NaN or inf in ``weight`` or ``inputs``, no calibration rows, ``bits``
            outside 2..8, a ``group_size`` that does not divide ``in``.
    """
    check_weight(weight, bits, group_size)
    check_inputs(inputs)
    search_grid(n_grid, duo_scaling)  # checks n_grid
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)  # (n, in)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features, weight expects {weight.shape[1]}")
    w = weight.to(torch.float32)
    x_mean, w_mean = x.abs().mean(0), _weight_means(w, group_size)  # (in,) each
    reference = x @ w.T  # (n, out)
    best, errors = None, []
    for ratio, duo in search_grid(n_grid, duo_scaling):
        s = _scales(x_mean, w_mean, ratio, duo)
        effective = rtn_quantize(w * s, bits, group_size) / s  # Q(W s) s^-1
        errors.append(float(((x @ effective.T - reference) ** 2).mean()))
        if not torch.isfinite(torch.tensor(errors[-1])):  # float32 overflow of huge inputs
            raise ValueError(
                f"the output error at ratio {ratio} is {errors[-1]}: inputs or weight too "
                "large for float32; scale them down"
            )
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], ratio, s, effective)
    return AWQResult(best[3], best[2], best[1], errors)


def check_awq_args(bits: int, group_size: int, n_grid: int, duo_scaling: bool) -> None:
    """The settings both twins' ``awq_layer`` and ``awq_model`` take, checked before any run."""
    from helpers.checks import bits as check_bits

    check_bits(bits)
    whole_number(group_size, "group_size")
    search_grid(n_grid, duo_scaling)


@torch.no_grad()
def capture_inputs(model: torch.nn.Module, batches: Sequence[Sequence[int]], layer: str):
    """The inputs ``(n_tokens, in)`` that module ``layer`` sees when ``model`` reads each
    token-id sequence of ``batches`` on its own (no padding)."""
    if not batches or not all(len(ids) for ids in batches):
        raise ValueError("batches must hold at least one calibration sequence, none empty")
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"{layer!r} is not a linear layer of the model")
    seen: list[torch.Tensor] = []
    hook = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0][0]))
    try:
        for ids in batches:
            model(input_ids=torch.tensor([list(ids)], device=module.weight.device))
    finally:
        hook.remove()
    # a NaN here comes from the model (NaN weights or an fp16 overflow): say where
    return finite_tensor(torch.cat(seen).float().cpu(), f"the inputs of {layer!r}")


def awq_layer(
    model: torch.nn.Module,
    tokenizer,
    batches: Sequence[Sequence[int]],
    layer: str,
    smooth: str,
    bits: int = 4,
    group_size: int = 32,
    n_grid: int = 20,
    duo_scaling: bool = False,
) -> AWQResult:
    """AWQ for the linear ``layer`` of ``model`` on calibration token ids ``batches``.

    Args:
        model: a transformers causal LM (not modified).
        tokenizer: unused here; the library twin hands it to llm-compressor.
        batches: calibration sequences of token ids, each run on its own.
        layer: the linear layer's name (``"model.layers.1.mlp.down_proj"``).
        smooth: the module whose output is ``layer``'s input, where ``1 / s`` is folded
            (``"model.layers.1.mlp.up_proj"``); unused here, the library needs it.
        bits, group_size, n_grid, duo_scaling: as in ``awq_quantize``.

    Returns:
        The ``AWQResult`` of ``awq_quantize`` on the captured inputs.
    """
    check_awq_args(bits, group_size, n_grid, duo_scaling)
    inputs = capture_inputs(model, batches, layer)  # checks that `layer` is a linear layer
    weight = dict(model.named_modules())[layer].weight.detach().float()
    device = weight.device  # the search runs where the model is (a GPU on the T4 profiles)
    result = awq_quantize(weight, inputs.to(device), bits, group_size, n_grid, duo_scaling)
    return AWQResult(result.weight.cpu(), result.scales.cpu(), result.ratio, result.errors)
