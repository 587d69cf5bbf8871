"""Packing: several short examples in one row, so that a batch carries fewer padding tokens.

Both twins take examples already encoded (``{"input_ids", "labels"}`` lists, e.g. from
``helpers.sft.naive.encode_records``) and must keep each example attending to itself only:
``naive`` by a block-diagonal causal mask written out in torch, ``library`` by TRL's packing and
padding-free collator, whose ``position_ids`` transformers turns into the same mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.constants import IGNORE_INDEX

# What both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "pack",
    "collate",
)


def padding_fraction(row_lengths: list[list[int]]) -> float:
    """The share of a run's token slots that are padding.

    Args:
        row_lengths: per batch, the number of real tokens in each row; every row of a batch is
            padded to the batch's longest row.
    Returns:
        padding slots / all slots, in [0, 1).
    """
    slots = sum(len(rows) * max(rows) for rows in row_lengths if rows)
    if slots == 0:
        raise ValueError("padding_fraction: no rows with tokens")
    return 1 - sum(sum(rows) for rows in row_lengths) / slots


def loss_sum(model, batch: dict[str, torch.Tensor], use_cache: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's labels (-100 ignored).

    Args:
        batch: ``input_ids`` and ``labels`` (B, T); ``attention_mask`` (2D or 4D) and
            ``position_ids`` are passed on when present.
        use_cache: False as in training. With a KV cache (the tiny model's config default)
            transformers 5.x skips its packed-row check and packed examples see each other.
    Returns:
        A scalar tensor on the model's device (the batch, built on the CPU, is moved there).
    """
    device = next(model.parameters()).device
    keys = ("input_ids", "attention_mask", "position_ids")
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    logits = model(**inputs, use_cache=use_cache).logits[:, :-1].float()  # (B, T-1, V)
    labels = batch["labels"][:, 1:].to(device)  # (B, T-1)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def alone_loss_sum(model, encoded: list[dict]) -> torch.Tensor:
    """The reference: each example run by itself (no padding, no neighbours), losses summed."""
    total = torch.zeros(())
    for example in encoded:
        ids = torch.tensor([example["input_ids"]])  # (1, T)
        labels = torch.tensor([example["labels"]])
        total = total + loss_sum(model, {"input_ids": ids, "labels": labels})
    return total


def check_encoded(encoded: list[dict], pack_len: int) -> None:
    """What both twins' ``pack`` accept: ``pack_len`` a whole number >= 1 and each example a
    non-empty ``input_ids`` with ``labels`` of the same length, no longer than ``pack_len``
    (TRL would silently cut a longer one; an empty one would leave labels one longer than the
    inputs once its first label is set to -100)."""
    from helpers.checks import whole_number

    whole_number(pack_len, "pack_len")
    if not encoded:
        raise ValueError("pack: encoded holds no examples")
    for number, example in enumerate(encoded):
        if not isinstance(example, dict) or not {"input_ids", "labels"} <= set(example):
            raise ValueError(f"pack: example {number} must be a dict with input_ids and labels")
        n, n_labels = len(example["input_ids"]), len(example["labels"])
        if n == 0:
            raise ValueError(f"pack: example {number} has no tokens: drop it before packing")
        if n_labels != n:
            raise ValueError(
                f"pack: example {number} has {n} input_ids but {n_labels} labels: one label "
                "per token"
            )
        if n > pack_len:
            raise ValueError(
                f"pack: example {number} has {n} tokens, more than pack_len={pack_len}: "
                "raise pack_len or truncate it first (helpers.data.encode's max_seq_len)"
            )


def check_rows(rows: list[dict]) -> None:
    """What both twins' ``collate`` accept: at least one packed row, none empty."""
    if not rows or not all(len(row["input_ids"]) for row in rows):
        raise ValueError("collate: rows must hold at least one packed row, none empty")
