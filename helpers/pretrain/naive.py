"""Pretraining by hand: text files streamed into token blocks, next-token loss, a warm-up and
cosine learning-rate schedule, held-out perplexity.

Public API (the same names as ``helpers.pretrain.library``, which uses datasets and
transformers):

    stream_blocks(paths, tokenizer, block_size, min_chars=1, docs_per_group=1000) -> blocks
    next_token_loss(model, input_ids) -> mean cross-entropy of each token given those before
    lr_schedule(optimizer, warmup_steps, max_steps) -> torch LambdaLR
    perplexity(model, blocks, micro_batch_size=32) -> exp(mean held-out loss)
    pretrain(model, blocks, max_steps=..., micro_batch_size=..., lr=..., ...) -> history

``blocks`` yields ``{"input_ids": [block_size ids]}`` rows, the form a ``datasets`` stream
yields, and can be read again (each pass opens the files anew): a pass never holds more than
one group of documents. Lines are split at ``\\n`` (a ``\\r\\n`` ending loses its ``\\r`` too).

Dimension names in shape comments: B blocks in a batch, T tokens in a block, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.pretrain import (
    DOCS_PER_GROUP,
    check_blocks,
    check_loop_args,
    check_stream_args,
    file_kind,
    jsonl_text,
    train_loop,
)


def read_documents(paths: list[Path], min_chars: int) -> Iterator[str]:
    """One document per line (a ``.jsonl`` line's ``"text"``), the blank and the short ones
    skipped, one line in memory."""
    as_json = file_kind(paths) == "json"
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip("\r\n")
                if as_json:
                    if not line.strip():
                        continue
                    line = jsonl_text(line, path, number)
                if len(line.strip()) >= min_chars:
                    yield line


def pack_group(docs: list[str], tokenizer, block_size: int) -> Iterator[list[int]]:
    """Tokenize ``docs``, end each with eos, concatenate, cut into ``block_size`` blocks; the
    last partial block is dropped."""
    ids = []
    for doc_ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += doc_ids + [tokenizer.eos_token_id]
    for start in range(0, len(ids) - block_size + 1, block_size):
        yield ids[start : start + block_size]


class TextBlocks:
    """Blocks of token ids from text files, computed as they are read; iterable many times."""

    def __init__(self, paths, tokenizer, block_size, min_chars, docs_per_group):
        self.paths, self.tokenizer, self.block_size = paths, tokenizer, block_size
        self.min_chars, self.docs_per_group = min_chars, docs_per_group

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        group = []
        for doc in read_documents(self.paths, self.min_chars):
            group.append(doc)
            if len(group) == self.docs_per_group:
                for block in pack_group(group, self.tokenizer, self.block_size):
                    yield {"input_ids": block}
                group = []
        for block in pack_group(group, self.tokenizer, self.block_size) if group else []:
            yield {"input_ids": block}


def stream_blocks(
    paths: str | Path | Sequence[str | Path],
    tokenizer,
    block_size: int,
    min_chars: int = 1,
    docs_per_group: int = DOCS_PER_GROUP,
) -> TextBlocks:
    """Token blocks from text files, one document per line (see the module docstring).

    Args:
        paths: a text file or a list of them, read in order.
        tokenizer: a transformers tokenizer (its eos token ends every document).
        block_size: tokens per block (T).
        min_chars: lines with fewer non-blank characters are dropped.
        docs_per_group: documents concatenated before cutting; the group's tail is dropped.
    Returns:
        an iterable of ``{"input_ids": list of block_size ids}``.
    """
    files = check_stream_args(paths, tokenizer, block_size, min_chars, docs_per_group)
    return TextBlocks(files, tokenizer, block_size, min_chars, docs_per_group)


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) from a transformers model (its ``.logits``) or a plain one."""
    out = model(input_ids)
    return getattr(out, "logits", out)


def next_token_loss(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of token t + 1 given tokens 0..t, over every position of every block:
    the logits at the last position have no next token, the first token no prediction."""
    logits = logits_of(model, input_ids)[:, :-1].float()  # (B, T - 1, V)
    targets = input_ids[:, 1:]  # (B, T - 1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate times a factor: from 0 up to 1 in a straight line over
    ``warmup_steps``, then down to 0 along half a cosine by ``max_steps`` (Loshchilov & Hutter
    2016, arXiv:1608.03983; the schedule of Llama's pretraining, there down to 10 %)."""
    check_loop_args(max_steps, 1, 1.0, warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def perplexity(model, blocks: Sequence, micro_batch_size: int = 32) -> float:
    """exp of the mean next-token loss over every predicted token of ``blocks`` (a list of
    ``{"input_ids": ...}`` rows or of id lists, all one length): how many tokens the model
    hesitates between, on average. The model is left in eval mode."""
    rows = check_blocks(blocks, "blocks")
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), micro_batch_size):
        batch = torch.tensor(rows[start : start + micro_batch_size])  # (B, T)
        n = batch.shape[0] * (batch.shape[1] - 1)  # each block predicts T - 1 tokens
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
    """Train ``model`` on ``blocks`` (read in order, again from the start when they run out).

    Args:
        model: a causal LM (a transformers model, or this course's naive Llama).
        blocks: ``{"input_ids": ...}`` rows, e.g. from ``stream_blocks``.
        heldout: blocks never trained on, scored by ``perplexity`` every ``eval_every`` steps.
        stop_after: stop after this many steps, the schedule still that of ``max_steps`` (to
            replay the start of a long run).
        schedule: ``schedule(optimizer, warmup_steps, max_steps)`` -> a torch LR scheduler, in
            place of ``lr_schedule``.
    Returns:
        the history: ``loss`` and ``lr`` per step, ``val_step`` and ``val_ppl``.
    """
    check_loop_args(max_steps, micro_batch_size, lr, warmup_steps, eval_every)
    if heldout is not None:
        check_blocks(heldout, "heldout")
    settings = dict(max_steps=max_steps, micro_batch_size=micro_batch_size, lr=lr)
    settings |= dict(warmup_steps=warmup_steps, weight_decay=weight_decay, heldout=heldout)
    settings |= dict(eval_every=eval_every, progress=progress, stop_after=stop_after)
    return train_loop(model, blocks, settings, next_token_loss, schedule or lr_schedule, perplexity)
