"""AWQ with llm-compressor (vLLM's maintained quantization library), through its ``oneshot``
pipeline: an ``AWQModifier`` (the scale search, a transform) followed by a
``QuantizationModifier`` (the 4-bit weight grid), calibrated on a local ``datasets.Dataset``
of token ids. The same public names as ``naive.py`` except ``awq_quantize``: llm-compressor
has no per-layer entry point (its search runs the module that holds the layer on cached
inputs), so the comparison is made one level up, on ``awq_layer`` (one layer of a model) and
``awq_model`` (every decoder layer, for the chapter's table).

Two adaptations to run llm-compressor 0.14 on a machine without a GPU, both kept inside the
call: its activation cache pins host memory for fast copies to an accelerator, which torch
refuses without one, so ``IntermediatesCache.pin_memory`` does nothing during the call; and
the calibration runs its ``sequential`` pipeline (its ``basic`` pipeline runs the scale
search with the not-yet-calibrated 4-bit grid switched on and skips every layer for NaN
outputs). llm-compressor 0.14 declares ``transformers<=5.17``; the course installs it with
``--no-deps`` next to its own transformers."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from collections.abc import Sequence
from unittest import mock

import torch

from helpers.checks import finite_tensor

from .naive import AWQResult, capture_inputs, check_awq_args, search_grid
from .naive import layer_rel_error as layer_rel_error

# llm-compressor logs a "no accelerator" warning on a CPU, which is what we mean here; the
# level is read once, when llmcompressor is first imported
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")


def _weight_args(bits: int, group_size: int):
    from compressed_tensors.quantization import QuantizationArgs

    # the naive twin's grid: asymmetric min-max per row and group of input columns
    return QuantizationArgs(
        num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group_size
    )


@contextlib.contextmanager
def _on_cpu():
    """Its cache's memory pinning off (see the module docstring), and its progress bars
    (plain tqdm on stderr, a dozen per layer) kept out of the notebook."""
    import logging

    from llmcompressor.pipelines.cache import IntermediatesCache

    # torch.fx warns once that llm-compressor's tracing checks an ambiguous flag
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    with (
        mock.patch.object(IntermediatesCache, "pin_memory", lambda *args, **kwargs: None),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        yield


def _oneshot(model, tokenizer, batches, mappings, targets, args, n_grid, duo_scaling):
    """Run AWQ + 4-bit quantization on a copy of ``model``; return the copy."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    data = Dataset.from_dict(
        {"input_ids": [list(b) for b in batches], "attention_mask": [[1] * len(b) for b in batches]}
    )
    recipe = [
        AWQModifier(mappings=mappings, duo_scaling=duo_scaling, n_grid=n_grid),
        QuantizationModifier(config_groups={"w4": {"targets": targets, "weights": args}}),
    ]
    with _on_cpu(), tempfile.TemporaryDirectory() as folder:
        work = copy.deepcopy(model)
        # oneshot re-reads the config from `name_or_path` (a hub id for a hub model): point it
        # at a local copy of the config so nothing is fetched
        work.config.save_pretrained(folder)
        work.config.name_or_path = folder
        return oneshot(
            model=work,
            processor=tokenizer,
            dataset=data,
            recipe=recipe,
            pipeline="sequential",
            num_calibration_samples=len(batches),
            shuffle_calibration_samples=False,
            batch_size=1,
        )


def _dequantized(module: torch.nn.Module) -> torch.Tensor:
    """The 4-bit values (out, in) llm-compressor's fake quantization gives ``module.weight``."""
    from compressed_tensors.quantization import forward_quantize

    args = module.quantization_scheme.weights
    return forward_quantize(module, module.weight, "weight", args).detach().float()


def _recovered_scales(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``s`` from the smoothing layer's weight before and after ``weight / s`` (per output
    row, read at each row's largest entry)."""
    if before.ndim == 1:  # a norm's weight: divided elementwise
        return before / after
    col = before.abs().argmax(1, keepdim=True)  # (rows, 1)
    return (before.gather(1, col) / after.gather(1, col)).squeeze(1)


def _pattern(name: str) -> str:
    """llm-compressor's regex form of one exact module name."""
    return "re:^" + name.replace(".", r"\.") + "$"


def scale_tolerance(dtype: torch.dtype) -> float:
    """How closely scales read back from a ``dtype`` smoothing weight can match: 1e-4 in fp32;
    in 16 bits, two roundings of the weight (``w / s`` is stored in ``dtype``)."""
    return max(1e-4, 2 * torch.finfo(dtype).eps)


def _chosen_ratio(scales, inputs, weight, group_size, n_grid, duo_scaling, rtol) -> float:
    """The grid ratio whose scales (the formula of ``naive``) equal llm-compressor's, which
    it does not return; NaN when none is within ``rtol``."""
    from .naive import grid_scales, weight_means

    x_mean, w_mean = inputs.abs().mean(0), weight_means(weight, group_size)
    for ratio, duo in search_grid(n_grid, duo_scaling):
        if torch.allclose(grid_scales(x_mean, w_mean, ratio, duo), scales, rtol=rtol, atol=0):
            return ratio
    return float("nan")


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
    """llm-compressor's AWQ for the linear ``layer`` of ``model`` (a copy is quantized).

    Args: as ``naive.awq_layer``; ``tokenizer`` is handed to ``oneshot`` (which wants one
    when it gets a dataset), ``smooth`` is the module llm-compressor divides by ``s``.

    Returns:
        ``AWQResult``: ``weight`` = llm-compressor's 4-bit ``Q(W s)`` divided by ``s`` (out,
        in); ``scales`` (in,) read back from ``smooth``'s weight; ``ratio`` the grid point
        that gives these scales; ``errors`` None (llm-compressor keeps them to itself).
    """
    from llmcompressor.modifiers.transform.awq import AWQMapping

    check_awq_args(bits, group_size, n_grid, duo_scaling)
    inputs = capture_inputs(model, batches, layer)  # checks `layer`; finds the ratio below
    modules = dict(model.named_modules())
    if smooth not in modules:
        raise ValueError(f"{smooth!r} is not a module of the model")
    finite_tensor(modules[layer].weight.detach(), "weight")  # as the naive twin checks it
    mapping = AWQMapping(_pattern(smooth), [_pattern(layer)])
    args = _weight_args(bits, group_size)
    done = dict(
        _oneshot(
            model, tokenizer, batches, [mapping], [_pattern(layer)], args, n_grid, duo_scaling
        ).named_modules()
    )
    scales = _recovered_scales(  # on the CPU, like the captured inputs (a model may be on a GPU)
        modules[smooth].weight.detach().float().cpu(), done[smooth].weight.detach().float().cpu()
    )
    weight = modules[layer].weight.detach().float().cpu()
    rtol = scale_tolerance(modules[smooth].weight.dtype)
    ratio = _chosen_ratio(scales, inputs, weight, group_size, n_grid, duo_scaling, rtol)
    return AWQResult(_dequantized(done[layer]).cpu() / scales, scales, ratio, None)


def awq_model(
    model: torch.nn.Module,
    tokenizer,
    batches: Sequence[Sequence[int]],
    bits: int = 4,
    group_size: int = 32,
    n_grid: int = 20,
    duo_scaling: bool = False,
) -> torch.nn.Module:
    """A plain copy of ``model`` after llm-compressor's AWQ on every decoder linear layer
    (its default mappings for the architecture: input norm -> q, k, v; v -> o when shapes
    allow; post-attention norm -> gate, up; up -> down), with the smoothed norms and the
    dequantized 4-bit weights written in (fake quantization: fp32 values on the 4-bit grid).
    The output head stays in full precision."""
    check_awq_args(bits, group_size, n_grid, duo_scaling)
    if not batches or not all(len(ids) for ids in batches):
        raise ValueError("batches must hold at least one calibration sequence, none empty")
    for name, param in model.named_parameters():
        finite_tensor(param.detach(), f"the model's {name}")
    args = _weight_args(bits, group_size)
    done = _oneshot(model, tokenizer, batches, None, ["Linear"], args, n_grid, duo_scaling)
    plain = copy.deepcopy(model)
    state = dict(plain.named_parameters())
    with torch.no_grad():
        for name, param in done.named_parameters():
            if name in state:
                state[name].copy_(param)
        for name, module in done.named_modules():
            if name != "lm_head" and hasattr(module, "quantization_scheme"):
                state[f"{name}.weight"].copy_(_dequantized(module))
    return plain.eval()
