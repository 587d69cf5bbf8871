"""Solutions to the exercises of chapter 02 (LoRA). Try them yourself first."""

from __future__ import annotations

import torch


def lora_param_count(in_features: int, out_features: int, r: int) -> int:
    """Trainable numbers LoRA adds to one (IN -> OUT) linear layer: A (r, IN) plus B (OUT, r)."""
    return r * in_features + out_features * r


def lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,  # peft's names for the two matrices
    lora_B: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """LoRA's output for inputs x (T, IN): x W^T + b + scaling * (x A^T) B^T, shape (T, OUT).

    Multiplying x by A first keeps the cost at r (IN + OUT) per token instead of forming the
    (OUT, IN) matrix B A.
    """
    frozen = x @ weight.T + (bias if bias is not None else 0)  # (T, OUT)
    return frozen + scaling * (x @ lora_A.T) @ lora_B.T  # (T, r) then (T, OUT)


def merge_weight(
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """The merged weight W + scaling * B A, shape (OUT, IN), as a new tensor."""
    return weight + scaling * (lora_B @ lora_A)
