"""The task data: read and validate JSONL, tokenize with the chat template, collate batches.

Records use the prompt/completion format that TRL and ``datasets`` read as they are::

    {"prompt": "Tag this review ...\\nReview: ...", "completion": "{\\"category\\": ...}"}

Bring your own data by writing the same two fields; ``load_jsonl`` checks every line and names
the file, the line and the field at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from helpers.paths import TASK_DIR
from helpers.task import format_prompt

REQUIRED_FIELDS = ("prompt", "completion")
IGNORE_INDEX = -100  # labels with this value add nothing to the loss (torch cross_entropy)


def _check_record(record: object, where: str) -> dict:
    """Return the record if it is a valid prompt/completion object; raise ValueError if not."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise ValueError(
                f"{where}: missing field {name!r} (each line needs "
                f"{' and '.join(map(repr, REQUIRED_FIELDS))})"
            )
        value = record[name]
        if not isinstance(value, str):
            raise ValueError(
                f"{where}: field {name!r} must be a string, got {type(value).__name__}"
            )
        if not value.strip():
            raise ValueError(f"{where}: field {name!r} is empty")
    return record


def load_jsonl(path: str | Path) -> Dataset:
    """Read a prompt/completion JSONL file into a ``datasets.Dataset``, checking every line.

    Args:
        path: a ``.jsonl`` file, one JSON object per line (blank lines are skipped).
    Returns:
        A Dataset with (at least) the columns ``prompt`` and ``completion``.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the first bad line, as ``<file>, line <n>: <what is wrong>``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a prompt/completion JSONL)")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: invalid JSON ({err.msg} at column {err.colno})"
                ) from None
            records.append(_check_record(record, where))
    if not records:
        raise ValueError(f"{path}: the file holds no records")
    return Dataset.from_list(records)


def load_task(split: str) -> Dataset:
    """One split of the course task: "train", "valid" or "test"."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Unknown split {split!r}: use 'train', 'valid' or 'test'.")
    return load_jsonl(TASK_DIR / f"{split}.jsonl")


def encode(tokenizer: PreTrainedTokenizerBase, record: dict, max_seq_len: int) -> dict:
    """Token ids and labels of one record; the prompt's labels are IGNORE_INDEX.

    The completion (and its eos) is kept whole; a sequence too long loses the start of its
    prompt, so the model still learns to answer.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, record["prompt"]), add_special_tokens=False)[
        "input_ids"
    ]
    answer_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    answer_ids = (answer_ids + [tokenizer.eos_token_id])[:max_seq_len]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(answer_ids) - max_seq_len) :]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


class Collator:
    """Turn a list of records into right-padded tensors for causal-LM training.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each (B, T) with T the longest
    sequence of the batch; labels are IGNORE_INDEX on prompt and padding tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int = 128):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [encode(self.tokenizer, r, self.max_seq_len) for r in records]
        longest = max(len(e["input_ids"]) for e in encoded)
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in encoded:
            n_pad = longest - len(e["input_ids"])
            batch["input_ids"].append(e["input_ids"] + [pad] * n_pad)
            batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * n_pad)
            batch["labels"].append(e["labels"] + [IGNORE_INDEX] * n_pad)
        return {k: torch.tensor(v) for k, v in batch.items()}
