"""Pretraining a small causal language model from raw text (chapter 11).

Two twins with the same public names, imported explicitly:

    from helpers.pretrain import naive, library

``naive`` streams text files line by line in plain Python, writes the next-token loss, the
learning-rate schedule and the training loop out in torch; ``library`` streams them through
``datasets`` (``load_dataset("text", streaming=True)`` with ``filter`` and batched ``map``),
takes the loss from transformers' model and the schedule from
``transformers.get_cosine_schedule_with_warmup``. Fed the same blocks, the two loops give the
same losses. Neither is imported here, so importing the package costs nothing.

Not a twin: ``offload.py`` (``measure_fsdp_step``) trains a fresh model a few steps under torch's
``fully_shard``, with or without ``CPUOffloadPolicy()``, and measures its losses, seconds per
step and, on CUDA, its peak memory (chapter 11, section 4); offload needs a GPU.

The data path keeps nothing but the current group of documents in memory: lines are read,
filtered (blank or shorter than ``min_chars``: dropped), tokenized, each followed by the
end-of-sequence token, and a group of ``docs_per_group`` documents is concatenated and cut into
blocks of ``block_size`` tokens; the group's last partial block is dropped (as transformers'
``run_clm.py`` example does for each ``map`` batch).

A plain text file holds one document per line. A ``.jsonl`` file holds one JSON object per line
with the document in its ``"text"`` field, for documents that contain line breaks (a chat
exchange rendered through its template); the files of one stream are all of one kind.
"""

from __future__ import annotations

# The names both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = ("stream_blocks", "next_token_loss", "lr_schedule", "perplexity", "pretrain")

from collections.abc import Sequence
from pathlib import Path

DOCS_PER_GROUP = 1000  # documents packed together (datasets' default batch of a batched map)


def check_stream_args(
    paths: object, tokenizer: object, block_size: object, min_chars: object, docs_per_group: object
) -> list[Path]:
    """Text files that exist, a tokenizer with an end-of-sequence token, positive sizes."""
    from helpers.checks import whole_number

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not isinstance(paths, Sequence) or not paths:
        raise ValueError(f"paths must be a text file or a non-empty list of them, got {paths!r}")
    files = [Path(p) for p in paths]
    for i, path in enumerate(files):
        if not path.is_file():
            raise FileNotFoundError(f"paths[{i}]: {path} is not a file")
    if getattr(tokenizer, "eos_token_id", None) is None or not callable(tokenizer):
        raise ValueError(
            "tokenizer must be a transformers tokenizer with an eos_token_id (it ends each "
            f"document), got {type(tokenizer).__name__}"
        )
    whole_number(block_size, "block_size", low=2)
    whole_number(min_chars, "min_chars", low=0)
    whole_number(docs_per_group, "docs_per_group")
    file_kind(files)
    return files


def file_kind(files: list[Path]) -> str:
    """``"json"`` when every file is ``.jsonl`` (a ``"text"`` field per line), ``"text"`` when
    none is; a mix is refused (``datasets`` reads one format per stream)."""
    kinds = {"json" if f.suffix == ".jsonl" else "text" for f in files}
    if len(kinds) > 1:
        raise ValueError(
            f"paths mixes .jsonl and plain text files ({[f.name for f in files]}): "
            "stream them separately, or write them all in one format"
        )
    return kinds.pop()


def jsonl_text(line: str, path: Path, number: int) -> str:
    """The ``"text"`` field of one line of a ``.jsonl`` file; the error names file and line."""
    import json

    try:
        record = json.loads(line)
        text = record["text"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f'{path}, line {number}: expected a JSON object with a "text" field ({err!r:.80})'
        ) from None
    if not isinstance(text, str):
        raise ValueError(f'{path}, line {number}: "text" must be a string, got {text!r:.40}')
    return text


def check_loop_args(
    max_steps: object,
    micro_batch_size: object,
    lr: object,
    warmup_steps: object,
    eval_every: object,
) -> None:
    from helpers.checks import positive_number, whole_number

    whole_number(max_steps, "max_steps")
    whole_number(micro_batch_size, "micro_batch_size")
    positive_number(lr, "lr")
    whole_number(warmup_steps, "warmup_steps", low=0, high=max_steps)
    whole_number(eval_every, "eval_every")


def check_stop_after(stop_after: object, max_steps: int) -> int:
    """``None`` (run every step) or a step count from 1 to ``max_steps``."""
    from helpers.checks import whole_number

    if stop_after is None:
        return max_steps
    whole_number(stop_after, "stop_after", high=max_steps)
    return stop_after


def check_blocks(blocks: object, name: str) -> list[list[int]]:
    """A non-empty list of token-id blocks (``{"input_ids": ids}`` rows or id lists), all of
    one length of at least 2. Returns the id lists."""
    if not isinstance(blocks, Sequence) or not blocks:
        raise ValueError(f"{name} must be a non-empty list of token-id blocks, got {blocks!r:.80}")
    rows = [row["input_ids"] if isinstance(row, dict) else row for row in blocks]
    lengths = sorted({len(row) for row in rows})
    if len(lengths) != 1 or lengths[0] < 2:
        raise ValueError(
            f"{name}: every block must hold the same number (at least 2) of token ids, "
            f"got lengths {lengths[:5]}"
        )
    return rows


def micro_batches(blocks, micro_batch_size: int):
    """(micro_batch_size, block_size) tensors of consecutive blocks, forever: the stream is
    read again from its start when it ends (an epoch); a last short batch is dropped."""
    import torch

    while True:
        batch, seen = [], 0
        for row in blocks:
            seen += 1
            batch.append(row["input_ids"])
            if len(batch) == micro_batch_size:
                yield torch.tensor(batch)  # (B, T)
                batch = []
        if seen < micro_batch_size:
            raise ValueError(
                f"blocks holds {seen} block(s), fewer than micro_batch_size={micro_batch_size} "
                "(or it is a one-shot iterator that ran out): pass a stream that can be read again"
            )


def train_loop(model, blocks, settings: dict, loss_fn, schedule_fn, perplexity_fn) -> dict:
    """The pretraining loop both twins run, each with its own loss, schedule and perplexity:
    AdamW (betas 0.9, 0.95 as in Llama's paper), the gradient clipped to norm 1, one step per
    micro-batch, the held-out perplexity every ``eval_every`` steps and after the last.

    Returns:
        ``{"loss": [...], "lr": [...], "val_step": [...], "val_ppl": [...]}``: per step the
        training loss and the learning rate it used; the held-out perplexity at ``val_step``.
    """
    import torch
    from tqdm.auto import tqdm

    s = settings
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=(0.9, 0.95), weight_decay=s["weight_decay"])
    schedule = schedule_fn(opt, s["warmup_steps"], s["max_steps"])
    history = {"loss": [], "lr": [], "val_step": [], "val_ppl": []}
    batches = micro_batches(blocks, s["micro_batch_size"])
    last = check_stop_after(s["stop_after"], s["max_steps"])
    if not callable(schedule_fn):
        raise TypeError(
            f"schedule must be a function (optimizer, warmup_steps, max_steps), got {schedule_fn!r}"
        )
    model.train()
    for step in tqdm(range(1, last + 1), desc="pretraining", disable=not s["progress"]):
        loss = loss_fn(model, next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        history["lr"].append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        history["loss"].append(loss.item())
        if s["heldout"] is not None and (step % s["eval_every"] == 0 or step == last):
            history["val_step"].append(step)
            history["val_ppl"].append(perplexity_fn(model, s["heldout"]))
            model.train()
    model.eval()
    return history
