"""Checkers for the exercises of chapter 02 (LoRA).

Each takes the learner's function and raises AssertionError with a hint when it is wrong. The
references are the course's own ``helpers.lora.naive``, so an exercise checks the idea the
chapter built. Inputs are fresh random draws, so a hard-coded answer cannot pass.
"""

from __future__ import annotations

import torch
from torch import nn

from helpers.lora import naive


def _call(fn, *args):
    """Run the learner's function; an error other than NotImplementedError becomes a hint."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # a shape mismatch is a wrong answer, not a crash of the checker
        raise AssertionError(f"your function raised {type(err).__name__}: {err}") from None


def check_lora_param_count(fn) -> None:
    """``fn(in_features, out_features, r)`` must give the trainable numbers LoRA adds to a layer."""
    for in_features, out_features, r in ((64, 64, 1), (256, 640, 8), (4096, 1024, 16)):
        got = _call(fn, in_features, out_features, r)
        layer = naive.LoRALinear(nn.Linear(in_features, out_features, bias=False), r, 2 * r)
        expected = layer.lora_A.weight.numel() + layer.lora_B.weight.numel()
        assert isinstance(got, int), f"return an int, got {type(got).__name__}"
        assert got != in_features * out_features, (
            "that is the size of the frozen weight W; LoRA trains A and B instead"
        )
        assert got == expected, (
            f"in={in_features}, out={out_features}, r={r}: A is (r, in) and B is (out, r)"
        )


def _random_layer(use_rslora: bool = False) -> naive.LoRALinear:
    """A LoRALinear with random sizes and a random (non-zero) B."""
    in_features, out_features = (int(v) for v in torch.randint(3, 40, (2,)))
    r = int(torch.randint(1, 6, ()))
    alpha = float(torch.randint(1, 33, ()))
    layer = naive.LoRALinear(nn.Linear(in_features, out_features), r, alpha, use_rslora=use_rslora)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def check_lora_forward(fn) -> None:
    """``fn(x, weight, bias, lora_A, lora_B, scaling)`` must compute LoRA's output."""
    for _ in range(3):
        layer = _random_layer()
        base = layer.base_layer
        x = torch.randn(int(torch.randint(1, 5, ())), base.in_features)  # (T, IN)
        args = (x, base.weight, base.bias, layer.lora_A.weight, layer.lora_B.weight)
        got = _call(fn, *args, layer.scaling)
        with torch.no_grad():
            expected, frozen = layer(x), base(x)
        assert isinstance(got, torch.Tensor), "return a tensor"
        assert got.shape == expected.shape, (
            f"expected shape {tuple(expected.shape)} (T, OUT), got {tuple(got.shape)}"
        )
        assert not torch.allclose(got, frozen, atol=1e-5), (
            "you returned the frozen layer's output: add the low-rank update"
        )
        torch.testing.assert_close(
            got,
            expected,
            atol=1e-5,
            rtol=1e-5,
            msg="h = x W^T + b + scaling * (x A^T) B^T: check the scaling and the bias",
        )


def check_merge_weight(fn) -> None:
    """``fn(weight, lora_A, lora_B, scaling)`` must return the merged weight, W untouched."""
    for use_rslora in (False, True):
        layer = _random_layer(use_rslora)
        weight = layer.base_layer.weight.detach().clone()
        lora_a, lora_b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        got = _call(fn, weight, lora_a, lora_b, layer.scaling)
        assert isinstance(got, torch.Tensor), "return a tensor"
        assert torch.equal(weight, layer.base_layer.weight), (
            "you changed the weight you were given: return a new tensor (no +=)"
        )
        assert got.shape == weight.shape, (
            f"the merged weight has W's shape (OUT, IN) = {tuple(weight.shape)}, "
            f"got {tuple(got.shape)}: B @ A, not A @ B"
        )
        torch.testing.assert_close(
            got,
            weight + layer.delta_weight().detach(),
            atol=1e-5,
            rtol=1e-5,
            msg="W' = W + scaling * B @ A",
        )
