"""Gradient accumulation by hand, in plain torch.

A batch too large for the GPU is split into k micro-batches; each is run forward and backward,
the gradients add up in ``param.grad``, and the optimizer steps once per window of k. The loss
of a causal LM is a mean over target tokens, so the question is what to divide by:

- correct: every micro-batch divides its *summed* token losses by N, the number of target
  tokens in the whole window. The k gradients then add up to the full batch's gradient.
- mean of means (the bug transformers fixed in 2024 with ``num_items_in_batch``): each
  micro-batch takes its own mean, and the window averages the k means (divide by k). A
  micro-batch with few target tokens gets as much weight as one with many, so the gradient
  is not the full batch's whenever micro-batches hold different numbers of targets.

Public API (the same names as ``helpers.accumulation.library``):

    count_targets(batches) -> int           target tokens (labels[:, 1:] != -100) in a window
    full_batch_gradients(model, batch)      reference: one batch, mean over its target tokens
    window_gradients(model, micro_batches)  correct accumulation (divide by the window's N)
    mean_of_means_gradients(model, micro_batches)   the buggy average, for the lesson
    train(model, windows, *, lr, mean_of_means=False, optimizer=None) -> losses
    skip_window(window, step, per_batch) -> bool   the rule both loops use for empty windows

Each ``*_gradients`` returns ``{name: grad}`` (copies) and leaves the model's grads cleared.
A batch is a dict of (B, T) tensors: input_ids, attention_mask, labels (-100 = no target).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from helpers.accumulation import targets
from helpers.accumulation.targets import count_targets
from helpers.constants import IGNORE_INDEX  # torch cross_entropy skips these labels

_require_targets = targets.require_targets  # the check both twins run, in targets.py


def skip_window(window: Sequence[dict[str, torch.Tensor]], step: int, per_batch: bool) -> bool:
    """True (with a warning) for a window the training loops must skip: no target tokens, or
    with per-micro-batch means a micro-batch without any. Both twins call this, so they skip the
    same windows with the same message and take no optimizer step for them."""
    try:
        _require_targets(window, per_batch)
    except ValueError as err:
        warnings.warn(f"window {step} skipped, no optimizer step: {err}", stacklevel=3)
        return True
    return False


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's target tokens (a scalar)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]  # (B, T-1, V), (B, T-1)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),  # (B * (T-1), V)
        labels.reshape(-1),  # (B * (T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _take_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy the trainable parameters' gradients, then clear them."""
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def full_batch_gradients(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Gradient of the mean token loss over one (large) batch: what accumulation must match."""
    n_targets = _require_targets([batch], per_batch=False)
    model.zero_grad(set_to_none=True)
    (token_loss_sum(model, batch) / n_targets).backward()
    return _take_grads(model)


def window_gradients(model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict:
    """Correct accumulation: each micro-batch's summed loss divided by the window's N.

    Args:
        micro_batches: k batches, each with its own padding length T_i.
    Returns:
        ``{parameter name: gradient}``, equal to ``full_batch_gradients`` of the k joined.
    """
    n_targets = _require_targets(micro_batches, per_batch=False)  # N, before any backward
    model.zero_grad(set_to_none=True)
    for batch in micro_batches:
        (token_loss_sum(model, batch) / n_targets).backward()  # grads add up in p.grad
    return _take_grads(model)


def mean_of_means_gradients(
    model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]]
) -> dict:
    """The buggy average: each micro-batch's mean loss, divided by k (the number of them)."""
    _require_targets(micro_batches, per_batch=True)
    model.zero_grad(set_to_none=True)
    for batch in micro_batches:
        mean_loss = token_loss_sum(model, batch) / count_targets([batch])
        (mean_loss / len(micro_batches)).backward()
    return _take_grads(model)


def train(
    model: nn.Module,
    windows: Iterable[Sequence[dict[str, torch.Tensor]]],
    *,
    lr: float,
    mean_of_means: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """One AdamW step per window of micro-batches; return each window's mean token loss.

    Args:
        windows: an iterable of windows, each a list of k micro-batches (one optimizer step).
        mean_of_means: use the buggy average instead of the window's token count.
    Returns:
        The window's loss per step: summed token losses / N (the same measure for both
        modes, so their curves can share a plot). A window with no target tokens (or, with
        ``mean_of_means``, a micro-batch without any) is skipped with a warning: no step, no
        loss in the list.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for step, window in enumerate(windows):
        if skip_window(window, step, per_batch=mean_of_means):
            continue
        n_targets, total = count_targets(window), 0.0
        for batch in window:
            loss_sum = token_loss_sum(model, batch)
            scale = count_targets([batch]) * len(window) if mean_of_means else n_targets
            (loss_sum / scale).backward()
            total += loss_sum.item() / n_targets
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    model.eval()
    return losses
