"""A short, plain training loop for causal-LM fine-tuning, shared by the chapters.

Gradient accumulation divides the summed token losses of the whole window by the window's
number of target tokens, so k micro-batches give the full batch's gradient (chapter 04 shows
why averaging per-micro-batch means does not).

Two optional extras: gradient clipping by global norm (``max_grad_norm``; QLoRA used 0.3,
Dettmers et al. 2023, appendix B) and a validation loss every ``eval_every`` steps on held-out
records (``eval_dataset``), the curve that shows over-fitting when it turns up.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.checks import positive_number, whole_number
from helpers.data import IGNORE_INDEX, Collator
from helpers.evaluation.naive import sequence_nll


def _batches(dataset, collate: Collator, micro_batch_size: int, seed: int):
    """Yield collated micro-batches forever, reshuffling each epoch (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=gen).tolist()
        for start in range(0, len(order) - micro_batch_size + 1, micro_batch_size):
            yield collate([dataset[i] for i in order[start : start + micro_batch_size]])


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropies over the batch's target tokens (a 0-dim tensor on the
    model's device; the batch is moved there, as a ``Collator`` builds it on the CPU)."""
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Position t predicts token t + 1: drop the last logit and the first label.
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]  # (B, T-1, V), (B, T-1)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def validation_loss(model, tokenizer, dataset, micro_batch_size: int = 16, max_seq_len: int = 128):
    """Token-weighted mean loss on ``dataset``'s target tokens, the model left in its mode.

    Args:
        dataset: prompt/completion records (see helpers.data), all of them scored.
    Returns:
        The summed cross-entropy over every target token divided by their number (a float).
    """
    whole_number(micro_batch_size, "micro_batch_size")
    if len(dataset) == 0:
        raise ValueError("validation_loss: the dataset holds no records")
    collate = Collator(tokenizer, max_seq_len)  # checks max_seq_len
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), micro_batch_size):
        batch = collate(
            [dataset[i] for i in range(start, min(start + micro_batch_size, len(dataset)))]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        # sequence_nll: the output head over slices of positions, never the batch's (B, T, V)
        # float32 logits (16 x 79 x 151,936 x 4 B = 734 MiB on a Qwen2.5 vocabulary)
        nll, n_targets = sequence_nll(
            model, batch["input_ids"], batch["labels"], batch["attention_mask"]
        )
        total += nll.sum().item()
        count += int(n_targets.sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("validation_loss: the dataset has no target tokens to score")
    return total / count


def train(
    model,
    tokenizer,
    dataset,
    *,
    max_steps: int,
    micro_batch_size: int,
    lr: float,
    grad_accum_steps: int = 1,
    max_seq_len: int = 128,
    seed: int = 0,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    mixed_precision: str | None = None,
    max_grad_norm: float | None = None,
    eval_dataset=None,
    eval_every: int = 10,
    history: dict[str, list] | None = None,
) -> list[float]:
    """Train the model's trainable parameters; return the loss of every optimizer step.

    Args:
        dataset: prompt/completion records (see helpers.data).
        max_steps: optimizer steps; each sees ``micro_batch_size * grad_accum_steps`` records.
        optimizer: defaults to AdamW(lr) over the parameters with ``requires_grad``.
        mixed_precision: "fp16" (autocast + loss scaling, for a T4) or "bf16" (autocast) on a
            GPU; None computes in the weights' own dtype.
        max_grad_norm: clip the global gradient norm to this (after unscaling); None: no clip.
        eval_dataset: held-out records; their ``validation_loss`` every ``eval_every`` steps
            and after the last one goes into ``history``.
        history: a dict to fill with ``grad_norm`` (global norm before clipping, per step) and,
            with ``eval_dataset``, ``val_step`` and ``val_loss`` (lists).
    Returns:
        One loss per optimizer step; a window with no target tokens is skipped with a warning
        (no step, no loss), as in ``helpers.accumulation``.
    """
    whole_number(max_steps, "max_steps")
    whole_number(micro_batch_size, "micro_batch_size")
    whole_number(grad_accum_steps, "grad_accum_steps")
    positive_number(lr, "lr")
    if len(dataset) < micro_batch_size:  # the draw would never fill one micro-batch
        raise ValueError(
            f"the dataset holds {len(dataset)} records, fewer than micro_batch_size="
            f"{micro_batch_size}: lower micro_batch_size or add records"
        )
    collate = Collator(tokenizer, max_seq_len)  # checks max_seq_len
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm}")
    if eval_dataset is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of steps, got {eval_every}")
    log = history if history is not None else {}
    log.update(grad_norm=[], val_step=[], val_loss=[])
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: add adapters or unfreeze.")
    opt = optimizer or torch.optim.AdamW(params, lr=lr)
    device = next(model.parameters()).device
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "")
    scaler = torch.amp.GradScaler("cuda", enabled=mixed_precision == "fp16")
    batches = _batches(dataset, collate, micro_batch_size, seed)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(max_steps), desc="training", disable=not progress)
    for step in bar:
        window = [
            {k: v.to(device) for k, v in next(batches).items()} for _ in range(grad_accum_steps)
        ]
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
        if n_targets == 0:  # every completion cut off by max_seq_len: no loss, so no step
            warnings.warn(
                f"window {step} skipped, no optimizer step: the window has no target tokens "
                "(every label after the first is -100); raise max_seq_len?",
                stacklevel=2,
            )
            continue
        total = 0.0
        for batch in window:
            ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
            with ctx:
                loss = token_loss_sum(model, batch) / n_targets
            scaler.scale(loss).backward()
            total += loss.item()
        scaler.unscale_(opt)  # true gradients (fp16 loss scaling undone) before the norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
        log["grad_norm"].append(norm.item())
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}")
        step = len(losses)
        if eval_dataset is not None and (step % eval_every == 0 or step == max_steps):
            log["val_step"].append(step)
            log["val_loss"].append(validation_loss(model, tokenizer, eval_dataset, 16, max_seq_len))
    model.eval()
    return losses
