"""Checks of what a public function is given, shared by both twins of every technique.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument at fault and says
what it should be, so a mistake stops at the call that made it instead of turning into a NaN,
an empty tensor or a crash deep inside a library. A twin calls the same check as its sibling,
so ``naive`` and ``library`` refuse the same inputs with the same words.
"""

from __future__ import annotations

import math

import torch


def whole_number(value: object, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``low..high`` (``high`` None: no upper bound); bools and floats
    refused (a ValueError, as for a number out of range)."""
    if low == 1 and high is None:
        wanted = "a positive integer"
    elif high is None:
        wanted = f"an integer of at least {low}"
    else:
        wanted = f"an integer from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {wanted}, got {value}")
    return value


def positive_number(value: object, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float above 0 (or at least 0 with ``allow_zero``)."""
    bound = "0 or more" if allow_zero else "above 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def bits(value: object, name: str = "bits", high: int = 8) -> int:
    """A code width of 2 to ``high`` bits. A grid needs at least 4 levels to be worth a scale
    and a zero point. Codes stored one per uint8 (GPTQ's) stop at 8: 9 bits would saturate at
    255. A weight rounded and returned in floating point (round-to-nearest, AWQ's search) has
    no such store and may go to 16, close to lossless, which is how a test isolates what the
    rounding does not cause."""
    return whole_number(value, name, 2, high)


def finite_tensor(tensor: object, name: str, allow_empty: bool = False) -> torch.Tensor:
    """A floating-point tensor with no NaN or inf (a NaN or inf input would spread through
    every scale or sum it enters and come out as a NaN result, or a NaN block in a file)."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if tensor.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}): nothing to work on")
    bad = ~torch.isfinite(tensor.detach())
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or inf value(s), the first at index {where} "
            f"({tensor[where].item()}): find where it came from (a diverged run, a bad "
            "checkpoint, an fp16 overflow) before going on"
        )
    return tensor


def token_ids(ids: torch.Tensor, vocab_size: int, name: str = "token_ids") -> torch.Tensor:
    """Integer token ids all in ``0..vocab_size - 1`` (the model's embedding rows)."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor of token ids, got {got}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise ValueError(
            f"{name} holds the id {bad}, outside the model's vocabulary 0..{vocab_size - 1}: "
            "were these ids made by another tokenizer?"
        )
    return ids


def vocab_size(model: torch.nn.Module) -> int:
    """The number of rows of a model's input embedding (its vocabulary as the model sees it)."""
    return int(model.get_input_embeddings().weight.shape[0])
