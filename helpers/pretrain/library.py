"""Pretraining with the libraries: text streamed by ``datasets``, the loss from transformers'
model, the schedule from ``transformers.get_cosine_schedule_with_warmup``. The same public
names as ``naive.py``.

``stream_blocks`` returns a ``datasets.IterableDataset``: ``load_dataset("text", ...,
streaming=True)`` (``"json"`` for ``.jsonl`` files) reads the files lazily, ``filter`` drops short lines, one batched ``map``
tokenizes and ends each document with eos, a second packs each batch of ``docs_per_group``
documents into blocks. Nothing runs until the stream is read, and each pass reads the files
again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import IterableDataset, load_dataset
from transformers import get_cosine_schedule_with_warmup

from helpers.pretrain import (
    DOCS_PER_GROUP,
    check_blocks,
    check_loop_args,
    check_stream_args,
    file_kind,
    train_loop,
)


def stream_blocks(
    paths: str | Path | Sequence[str | Path],
    tokenizer,
    block_size: int,
    min_chars: int = 1,
    docs_per_group: int = DOCS_PER_GROUP,
) -> IterableDataset:
    """Token blocks from text files, one document per line, as a streaming dataset of
    ``{"input_ids": list of block_size ids}`` rows (see ``naive.stream_blocks``)."""
    files = check_stream_args(paths, tokenizer, block_size, min_chars, docs_per_group)
    eos = tokenizer.eos_token_id

    def tokenize(rows: dict) -> dict:
        ids = tokenizer(rows["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids]}

    def pack(rows: dict) -> dict:
        ids = [token for doc in rows["input_ids"] for token in doc]
        starts = range(0, len(ids) - block_size + 1, block_size)
        return {"input_ids": [ids[start : start + block_size] for start in starts]}

    kind = file_kind(files)  # "text": one document a line; "json": a "text" field a line
    stream = load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)
    stream = stream.select_columns(["text"])
    stream = stream.filter(lambda row: len(row["text"].strip()) >= min_chars)
    stream = stream.map(tokenize, batched=True, remove_columns=["text"])
    return stream.map(pack, batched=True, batch_size=docs_per_group)


def next_token_loss(model, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss: labels are the inputs, the model shifts them itself."""
    return model(input_ids=input_ids, labels=input_ids).loss


def lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then half a cosine down to 0 at ``max_steps``."""
    check_loop_args(max_steps, 1, 1.0, warmup_steps, 1)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)


@torch.no_grad()
def perplexity(model, blocks: Sequence, micro_batch_size: int = 32) -> float:
    """exp of the token-weighted mean of transformers' loss over ``blocks``."""
    rows = check_blocks(blocks, "blocks")
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), micro_batch_size):
        batch = torch.tensor(rows[start : start + micro_batch_size])  # (B, T)
        n = batch.shape[0] * (batch.shape[1] - 1)
        total, count = total + next_token_loss(model, batch).item() * n, count + n
    return math.exp(total / count)


def pretrain(
    model,
    blocks,
    *,
    max_steps: int,
    micro_batch_size: int,
    lr: float,
    warmup_steps: int = 0,
    weight_decay: float = 0.1,
    heldout: Sequence | None = None,
    eval_every: int = 50,
    progress: bool = True,
    stop_after: int | None = None,
    schedule=None,
) -> dict[str, list]:
    """Train a transformers causal LM on ``blocks`` (see ``naive.pretrain``)."""
    check_loop_args(max_steps, micro_batch_size, lr, warmup_steps, eval_every)
    if heldout is not None:
        check_blocks(heldout, "heldout")
    settings = dict(max_steps=max_steps, micro_batch_size=micro_batch_size, lr=lr)
    settings |= dict(warmup_steps=warmup_steps, weight_decay=weight_decay, heldout=heldout)
    settings |= dict(eval_every=eval_every, progress=progress, stop_after=stop_after)
    return train_loop(model, blocks, settings, next_token_loss, schedule or lr_schedule, perplexity)
