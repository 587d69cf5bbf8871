"""Gradient accumulation with the libraries: accelerate's ``accumulate`` and transformers' loss.

What the installed sources do (accelerate 1.15, transformers 5.23):

- ``Accelerator(gradient_accumulation_steps=k)``: ``accumulate(model)`` counts micro-batches and
  sets ``sync_gradients`` on every k-th; a prepared optimizer's ``step`` and ``zero_grad`` do
  nothing in between. ``accelerator.backward(loss)`` divides the loss by k
  (``accelerator.py``, ``backward``). So the documented loop, ``backward(model(**b).loss)``,
  averages k per-micro-batch means: the mean-of-means bug.
- A transformers causal LM accepts ``num_items_in_batch``: its loss
  (``loss/loss_utils.py``, ``ForCausalLMLoss``) then sums the token losses and divides by that
  number instead of taking a mean. The Trainer counts it over the window as
  ``labels[..., 1:] != -100`` (``trainer.py``, ``_get_num_items_in_batch``), builds its
  Accelerator with ``num_steps=1`` and skips the division by k when it passed the count.

The correct library loop below passes the window's count and multiplies by k to undo
``backward``'s division, which is what the Trainer's arrangement amounts to.

Public API: the same names as ``helpers.accumulation.naive``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from accelerate import Accelerator
from torch import nn

from helpers.accumulation.naive import skip_window
from helpers.accumulation.targets import count_targets, require_targets


def _accelerator(k: int) -> Accelerator:
    """An Accelerator accumulating over k micro-batches, on the GPU when there is one."""
    return Accelerator(gradient_accumulation_steps=k, cpu=not torch.cuda.is_available())


def _take_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def full_batch_gradients(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Gradient of transformers' own loss (mean over target tokens) on one batch."""
    require_targets([batch], per_batch=False)  # transformers would return a NaN loss
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return _take_grads(model)


def _accumulate(model: nn.Module, micro_batches, count_window: bool) -> None:
    """Run a window through ``accelerator.accumulate``; the loss as the model computes it."""
    accelerator = _accelerator(len(micro_batches))
    n_targets = torch.tensor(count_targets(micro_batches))  # the Trainer passes a tensor too
    for batch in micro_batches:
        with accelerator.accumulate(model):
            if count_window:  # sum / N, then undo backward's division by k
                loss = model(**batch, num_items_in_batch=n_targets).loss
                accelerator.backward(loss * accelerator.gradient_accumulation_steps)
            else:  # the documented loop: a mean per micro-batch, divided by k in backward
                accelerator.backward(model(**batch).loss)


def window_gradients(model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict:
    """Correct accumulation with accelerate and ``num_items_in_batch`` (see module docstring).

    Args:
        micro_batches: k batches of (B, T_i) input_ids, attention_mask, labels.
    Returns:
        ``{parameter name: gradient}``.
    """
    require_targets(micro_batches, per_batch=False)
    model.zero_grad(set_to_none=True)
    _accumulate(model, micro_batches, count_window=True)
    return _take_grads(model)


def mean_of_means_gradients(
    model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]]
) -> dict:
    """What ``accelerator.backward(model(**batch).loss)`` accumulates: the mean of the means."""
    require_targets(micro_batches, per_batch=True)
    model.zero_grad(set_to_none=True)
    _accumulate(model, micro_batches, count_window=False)
    return _take_grads(model)


def train(
    model: nn.Module,
    windows: Iterable[Sequence[dict[str, torch.Tensor]]],
    *,
    lr: float,
    mean_of_means: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """The same training loop through accelerate: a prepared optimizer steps every k-th batch.

    Returns:
        Each window's summed token losses / N (the same measure as the naive twin). Windows
        without target tokens are skipped with the naive twin's warning (``skip_window``);
        whole windows are skipped, so accelerate's micro-batch count stays aligned.
    """
    windows = [list(w) for w in windows]
    if not windows:
        return []
    accelerator = _accelerator(len(windows[0]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = accelerator.prepare(optimizer or torch.optim.AdamW(params, lr=lr))
    model.train()
    losses = []
    for step, window in enumerate(windows):
        if skip_window(window, step, per_batch=mean_of_means):
            continue
        n_targets, total = torch.tensor(count_targets(window)), 0.0
        for batch in window:
            with accelerator.accumulate(model):
                if mean_of_means:
                    loss = model(**batch).loss
                    total += loss.item() * count_targets([batch]) / n_targets.item()
                    accelerator.backward(loss)
                else:
                    loss = model(**batch, num_items_in_batch=n_targets).loss
                    total += loss.item()
                    accelerator.backward(loss * accelerator.gradient_accumulation_steps)
                optimizer.step()  # a no-op until the k-th micro-batch
                optimizer.zero_grad()
        losses.append(total)
    model.eval()
    return losses
