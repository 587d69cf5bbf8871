"""Solutions to the exercises of chapter 03 (QLoRA). Try them yourself first."""

from __future__ import annotations

import random

import numpy as np
import torch

from helpers.quantization import naive as quant


def merge_weight(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, int],
    lora_A: torch.Tensor,  # noqa: N803 (peft's name)
    lora_B: torch.Tensor,  # noqa: N803
    scaling: float,
) -> torch.Tensor:
    """The right merge: dequantize the NF4 base, then add scaling * B A (float32, (OUT, IN)).

    Args:
        packed, absmax: NF4 codes (N/2,) and float32 absmax (N/64,) from ``quantize_nf4``.
        lora_A: (r, IN); lora_B: (OUT, r).
    """
    base = quant.dequantize_nf4(packed, absmax, shape)  # (OUT, IN) float32
    return base + scaling * (lora_B.float() @ lora_A.float())


def unscale_gradients(
    scaled_grads: list[torch.Tensor], scale: float
) -> tuple[list[torch.Tensor], bool]:
    """What ``GradScaler.unscale_`` does: float32 gradients divided by the loss scale, and
    whether any was inf or NaN (then the optimizer step is skipped and the scale lowered)."""
    grads = [g.float() / scale for g in scaled_grads]
    found_inf = not all(bool(torch.isfinite(g).all()) for g in grads)
    return grads, found_inf


def snapshot_rng() -> dict:
    """The states of torch's, Python's and NumPy's global random generators."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def restore_rng(state: dict) -> None:
    """Put back what ``snapshot_rng`` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
