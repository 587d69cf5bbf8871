"""Supervised fine-tuning with the course's own loop (``helpers.train``), reused as it is.

The loop already learns the completion only (``helpers.data.encode`` sets the prompt's labels to
-100) and divides each step's summed token losses by the step's target-token count. This module
adds what a comparison with TRL needs: the order in which the loop draws records, the encoded
records themselves, and a record of every step (loss, learning rate, gradient norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from helpers.data import encode
from helpers.lora.library import add_lora
from helpers.sft import SFTRun, quiet_version_skew
from helpers.train import _batches, train


@dataclass
class SFTResult:
    """What a run leaves: the adapted model and one entry per optimizer step."""

    model: torch.nn.Module
    losses: list[float]
    lrs: list[float]
    grad_norms: list[float]
    encoded: list[dict] = field(default_factory=list)  # the first micro-batch, tokenized


def order_records(dataset, run: SFTRun) -> list[dict]:
    """The records in the order the course's loop draws them (its seeded shuffle per epoch).

    Returns:
        ``max_steps * grad_accum_steps * micro_batch_size`` records, batch after batch.
    """
    draw = _batches(dataset, lambda records: records, run.micro_batch_size, run.seed)
    n_batches = run.max_steps * run.grad_accum_steps
    return [record for _ in range(n_batches) for record in next(draw)]


def encode_records(tokenizer, records: list[dict], run: SFTRun) -> list[dict]:
    """Token ids and labels (-100 outside the completion) of each record, as the loop sees them.

    Returns:
        One ``{"input_ids": list[int], "labels": list[int]}`` per record (unpadded).
    """
    return [encode(tokenizer, record, run.max_seq_len) for record in records]


def sft_train(
    model, tokenizer, dataset, run: SFTRun, *, progress: bool = True, tracker=None
) -> SFTResult:
    """Add a LoRA adapter (seeded) and train it with ``helpers.train.train``.

    Args:
        model: the base causal LM (its weights stay frozen).
        dataset: prompt/completion or messages records (``helpers.data.load_jsonl``).
        tracker: optional ``helpers.tracking.Tracker``; each step's numbers are logged to it
            after the loop (the course's loop has no per-step hook).
    Returns:
        An ``SFTResult``; the learning rate is constant, so ``lrs`` repeats ``run.lr``.
    """
    torch.manual_seed(run.seed)  # the adapter's initial A matrices come from this generator
    with quiet_version_skew():
        peft_model = add_lora(model, run.r, run.alpha, run.target_modules)
        if run.gradient_checkpointing:  # as SFTConfig(gradient_checkpointing=True) does
            peft_model.gradient_checkpointing_enable({"use_reentrant": False})
            peft_model.enable_input_require_grads()
    history: dict[str, list] = {}
    losses = train(
        peft_model,
        tokenizer,
        dataset,
        max_steps=run.max_steps,
        micro_batch_size=run.micro_batch_size,
        lr=run.lr,
        grad_accum_steps=run.grad_accum_steps,
        max_seq_len=run.max_seq_len,
        seed=run.seed,
        progress=progress,
        max_grad_norm=run.max_grad_norm,
        mixed_precision=run.mixed_precision,
        history=history,
    )
    lrs = [run.lr] * len(losses)
    if tracker is not None:
        for step, (loss, norm) in enumerate(zip(losses, history["grad_norm"], strict=True), 1):
            tracker.log(
                {"train/loss": loss, "train/learning_rate": run.lr, "train/grad_norm": norm}, step
            )
    first = order_records(dataset, SFTRun(**{**run.__dict__, "max_steps": 1}))
    first = first[: run.micro_batch_size]
    return SFTResult(
        peft_model, losses, lrs, history["grad_norm"], encode_records(tokenizer, first, run)
    )
