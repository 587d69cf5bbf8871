"""Packing by hand: concatenate examples into rows and build the mask that keeps them apart.

Each row gets ``position_ids`` that restart at 0 for every example (rotary embeddings see the
positions an example has alone) and a 4D block-diagonal causal mask: token ``q`` may attend to
token ``k`` only if ``k <= q`` and both belong to the same example. The first label of every
example is -100, so no example is asked to predict the first token of the next one.
"""

from __future__ import annotations

import torch

from helpers.data import IGNORE_INDEX
from helpers.packing import check_encoded, check_rows


def pack(encoded: list[dict], pack_len: int) -> list[dict]:
    """Greedy packing in order: start a new row when the next example does not fit.

    Args:
        encoded: ``{"input_ids": list[int], "labels": list[int]}`` per example.
        pack_len: the longest row, in tokens; an example longer than this, an empty one, or
            one whose labels are not one per token is a ValueError (in both twins).
    Returns:
        Rows with ``input_ids``, ``labels``, ``position_ids`` (lists) and ``seq_lengths``.
    """
    check_encoded(encoded, pack_len)
    rows: list[dict] = []
    for example in encoded:
        n = len(example["input_ids"])
        if not rows or sum(rows[-1]["seq_lengths"]) + n > pack_len:
            rows.append({"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []})
        row = rows[-1]
        row["input_ids"] += example["input_ids"]
        row["labels"] += [IGNORE_INDEX] + example["labels"][1:]  # never predicted across
        row["position_ids"] += list(range(n))
        row["seq_lengths"].append(n)
    return rows


def block_causal_mask(seq_lengths: list[list[int]], length: int) -> torch.Tensor:
    """True where attention is allowed: causal and inside one example; padding sees itself.

    Returns:
        A bool tensor (B, 1, T, T) with T = ``length``, the form transformers takes as a 4D mask.
    """
    masks = []
    for lengths in seq_lengths:
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        segment = torch.cat([segment, torch.full((length - len(segment),), -1)])  # (T,)
        same = segment[:, None] == segment[None, :]  # (T, T)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        masks.append(same & causal)
    return torch.stack(masks)[:, None]  # (B, 1, T, T)


def collate(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows to the longest; add the block-diagonal mask.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` (B, T) and ``attention_mask`` (B, 1, T, T).
    """
    check_rows(rows)
    length = max(len(r["input_ids"]) for r in rows)
    pad = lambda values, fill: values + [fill] * (length - len(values))  # noqa: E731
    return {
        "input_ids": torch.tensor([pad(r["input_ids"], pad_token_id) for r in rows]),
        "labels": torch.tensor([pad(r["labels"], IGNORE_INDEX) for r in rows]),
        "position_ids": torch.tensor([pad(r["position_ids"], 0) for r in rows]),
        "attention_mask": block_causal_mask([r["seq_lengths"] for r in rows], length),
    }
