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

``awq_model`` does it for a whole Llama or Qwen2 so that the result is deployable: layers that
read the same input must share one ``s``, since one RMSNorm (or one linear layer) in front can
absorb only one ``1/s``. So, as llm-compressor's default mappings do, per decoder layer:
``input_layernorm -> q, k, v`` (one ``s``), ``v -> o`` (only where v's outputs are o's inputs:
not with grouped-query attention), ``post_attention_layernorm -> gate, up`` (one ``s``),
``up -> down``. A shared ``s`` is scored by the output error of the block that holds its layers
(the attention block for q, k, v; the MLP for gate, up; the layer itself for o and down), as
llm-compressor scores it. Then every linear layer of the smoothed model is rounded to the grid:
its weight is plain round-to-nearest of ``W diag(s)``, and the norm holds ``1/s``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from helpers.checks import finite_tensor, whole_number
from helpers.gptq.naive import check_inputs, check_weight, rtn_quantize
from helpers.gptq.naive import layer_rel_error as layer_rel_error


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


def weight_means(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |W| normalised by each group's max: (in,)."""
    w = weight.abs().reshape(-1, group_size)  # (out * G, g)
    # normalised |W| (out, in), averaged over the rows: (in,)
    return (w / (w.amax(1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


def grid_scales(x_mean, w_mean, ratio: float, duo: bool) -> torch.Tensor:
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
            outside 2..16 (the weight is rounded and returned in floating point), a ``group_size`` that does not divide ``in``.
    """
    check_weight(weight, bits, group_size)
    check_inputs(inputs)
    search_grid(n_grid, duo_scaling)  # checks n_grid
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)  # (n, in)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features, weight expects {weight.shape[1]}")
    w = weight.to(torch.float32)
    x_mean, w_mean = x.abs().mean(0), weight_means(w, group_size)  # (in,) each
    reference = x @ w.T  # (n, out)
    best, errors = None, []
    for ratio, duo in search_grid(n_grid, duo_scaling):
        s = grid_scales(x_mean, w_mean, ratio, duo)
        effective = rtn_quantize(w * s, bits, group_size) / s  # Q(W s) s^-1
        errors.append(float(((x @ effective.T - reference) ** 2).mean()))  # (n, out) outputs
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

    check_bits(bits, high=16)  # rounded weights come back in floating point: no uint8 store
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
    # every sequence's (T, in) inputs, stacked: (n_tokens, in)
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


def smoothing_groups(model: torch.nn.Module, index: int) -> list[tuple[str, list[str], str]]:
    """``(smooth, balance layers, scored block)`` names of decoder layer ``index``: the layers
    in ``balance`` share one ``s``, folded into ``smooth`` (llm-compressor's default mappings
    for Llama and Qwen2; ``v -> o`` only where v's outputs are o's inputs)."""
    p = f"model.layers.{index}."
    attn = model.get_submodule(p + "self_attn")
    qkv = [p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"]
    groups = [(p + "input_layernorm", qkv, p + "self_attn")]
    if attn.v_proj.out_features == attn.o_proj.in_features:  # no grouped-query attention
        groups.append((p + "self_attn.v_proj", [p + "self_attn.o_proj"], p + "self_attn.o_proj"))
    groups.append(
        (p + "post_attention_layernorm", [p + "mlp.gate_proj", p + "mlp.up_proj"], p + "mlp")
    )
    return groups + [(p + "mlp.up_proj", [p + "mlp.down_proj"], p + "mlp.down_proj")]


def _first(output):
    """A module's output tensor (attention blocks return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def _capture_blocks(model, batches, groups):
    """For each group: the calls of its scored block ``[(args, kwargs, output)]`` and the
    inputs ``(n_tokens, in)`` of its layers, one calibration sequence at a time."""
    calls = {block: [] for _, _, block in groups}
    inputs = {smooth: [] for smooth, _, _ in groups}

    def block_in(block):  # the block's arguments, as it was called
        return lambda mod, args, kwargs: calls[block].append([args, kwargs, None])

    def block_out(block):  # its output (attention blocks return (output, weights))
        return lambda mod, args, out: calls[block][-1].__setitem__(2, _first(out))

    def layer_in(smooth):  # the input of the layers that share one scale: (T, in)
        return lambda mod, args: inputs[smooth].append(args[0].reshape(-1, args[0].shape[-1]))

    hooks = []
    for smooth, balance, block in groups:
        module = model.get_submodule(block)
        hooks.append(module.register_forward_pre_hook(block_in(block), with_kwargs=True))
        hooks.append(module.register_forward_hook(block_out(block)))
        hooks.append(model.get_submodule(balance[0]).register_forward_pre_hook(layer_in(smooth)))
    device = next(model.parameters()).device
    try:
        for ids in batches:
            model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return calls, {k: torch.cat(v).float() for k, v in inputs.items()}  # {smooth: (n_tokens, in)}


@torch.no_grad()
def _shared_scale(model, calls, x, balance, block, bits, group_size, n_grid, duo_scaling):
    """The grid point's ``s`` (in,) that minimises the block's mean squared output error when
    every layer in ``balance`` is ``Q(W s) / s`` (the model is restored afterwards)."""
    layers = [model.get_submodule(name) for name in balance]
    originals = [layer.weight.detach().clone() for layer in layers]
    x_mean = x.abs().mean(0)  # (in,)
    w_mean = weight_means(torch.cat(originals).float(), group_size)  # (in,): duo only
    scored, best = model.get_submodule(block), None
    try:
        for ratio, duo in search_grid(n_grid, duo_scaling):
            s = grid_scales(x_mean, w_mean, ratio, duo)
            for layer, w in zip(layers, originals, strict=True):
                layer.weight.data = (rtn_quantize(w.float() * s, bits, group_size) / s).to(w.dtype)
            sq, n = 0.0, 0
            for args, kwargs, reference in calls:
                out = _first(scored(*args, **kwargs))
                sq += float(((out.float() - reference.float()) ** 2).sum())
                n += reference.numel()
            if best is None or sq / n < best[0]:
                best = (sq / n, s)
    finally:
        for layer, w in zip(layers, originals, strict=True):
            layer.weight.data = w
    return best[1]


@torch.no_grad()
def _fold(model, smooth: str, balance: list[str], s: torch.Tensor) -> None:
    """``smooth`` divided by ``s`` (a norm's weight, or a linear layer's last output rows and
    bias), each balance layer's input columns multiplied by ``s``: the same function."""
    module = model.get_submodule(smooth)
    w = module.weight
    if w.ndim == 1:
        w.copy_((w.float() / s).to(w.dtype))
    else:
        w[-len(s) :] = (w[-len(s) :].float() / s[:, None]).to(w.dtype)
    if getattr(module, "bias", None) is not None:
        module.bias[-len(s) :] = (module.bias[-len(s) :].float() / s).to(module.bias.dtype)
    for name in balance:
        w = model.get_submodule(name).weight
        w.copy_((w.float() * s[None, :]).to(w.dtype))


def awq_model(
    model: torch.nn.Module,
    tokenizer,
    batches: Sequence[Sequence[int]],
    bits: int = 4,
    group_size: int = 32,
    n_grid: int = 20,
    duo_scaling: bool = False,
) -> torch.nn.Module:
    """A deployable AWQ copy of a Llama or Qwen2 ``model`` (not modified): one ``s`` per
    ``smoothing_groups`` entry, folded into the norm or layer in front, then every decoder
    linear weight rounded to the 4-bit grid (dequantized values: fake quantization). Every
    layer is calibrated on the full-precision model's activations; the output head stays.

    Args: as ``awq_layer``; ``tokenizer`` is unused here (the library twin needs it).
    """
    if not batches or not all(len(ids) for ids in batches):
        raise ValueError("batches must hold at least one calibration sequence, none empty")
    out = copy.deepcopy(model)
    for index in range(model.config.num_hidden_layers):  # one layer's activations at a time
        groups = smoothing_groups(model, index)
        calls, inputs = _capture_blocks(model, batches, groups)
        for smooth, balance, block in groups:  # each searched on the original weights
            search = (bits, group_size, n_grid, duo_scaling)
            s = _shared_scale(model, calls[block], inputs[smooth], balance, block, *search)
            _fold(out, smooth, balance, s.to(out.get_submodule(smooth).weight.device))
        del calls, inputs
    with torch.no_grad():
        for name, module in out.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
                w = module.weight
                w.copy_(rtn_quantize(w.float(), bits, group_size).to(w.dtype))
    return out.eval()
