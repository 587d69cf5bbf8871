"""Packing with TRL: ``pack_dataset`` (best-fit decreasing) and the padding-free collator.

The collator flattens a batch into one row with ``position_ids`` restarting at each example and
no ``attention_mask``. transformers (5.x, ``masking_utils.find_packed_sequence_indices``) reads
the restarts and builds a block-diagonal causal mask for the sdpa and eager attention too, so
this works on a CPU; FlashAttention's varlen kernel (a GPU) uses ``cu_seq_lens`` instead. Passing
an all-ones 2D ``attention_mask`` as well turns that detection off: the examples then attend to
each other (the chapter measures it).
"""

from __future__ import annotations

import datasets
import torch
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers.packing import check_encoded, check_rows


def pack(encoded: list[dict], pack_len: int) -> list[dict]:
    """TRL's best-fit-decreasing packing of encoded examples into rows of at most ``pack_len``.

    Returns:
        Rows with ``input_ids``, ``labels`` and ``seq_lengths`` (lists).
    """
    check_encoded(encoded, pack_len)  # TRL would cut a longer example without a word
    datasets.disable_progress_bars()
    table = datasets.Dataset.from_list(
        [{k: e[k] for k in ("input_ids", "labels")} for e in encoded]
    )
    return list(pack_dataset(table, pack_len, strategy="bfd"))


def collate(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """TRL's padding-free collator: the rows flattened into one, labels -100 at each start.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` (1, N) and the varlen boundaries.
    """
    check_rows(rows)
    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(rows)
