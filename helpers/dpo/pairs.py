"""Preference pairs from the course's task: the right JSON answer against a plausible wrong one.

A pair is TRL's preference record ``{"prompt", "chosen", "rejected"}``. Two sources of wrong
answers:

- ``flipped_label_pairs``: the reference answer with one field changed to another label seen in
  the data (a review tagged "delivery" instead of "returns"). Cheap, and every rejected answer
  is valid JSON that differs from the chosen one by exactly one field.
- ``on_policy_pairs``: the model's own wrong outputs (``helpers.task.generate_answers``), so the
  pairs push down the mistakes this model actually makes (Rafailov et al. 2023 sample both
  answers from the reference policy; later work, e.g. Tajwar et al. 2024, finds on-policy
  negatives help most).

``to_trl_record`` turns a text pair into what both DPO twins tokenize: the prompt wrapped in the
chat template as the course's other chapters wrap it (``helpers.task.format_prompt``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from helpers.checks import whole_number
from helpers.task import FIELDS, format_prompt, parse_answer, score


def _gold(record: dict, number: int) -> dict:
    """The record's reference answer as a dict with the task's fields, or a ValueError."""
    if not isinstance(record, dict) or "prompt" not in record or "completion" not in record:
        raise ValueError(f"dataset record {number}: needs 'prompt' and 'completion' (the task)")
    answer = parse_answer(record["completion"])
    if answer is None or not all(isinstance(answer.get(f), str) for f in FIELDS):
        raise ValueError(
            f"dataset record {number}: the completion {record['completion']!r} is not the "
            f"task's JSON with the fields {FIELDS}"
        )
    return answer


def flipped_label_pairs(dataset, seed: int = 0) -> list[dict]:
    """One pair per task record: chosen is its answer, rejected the same JSON with one field
    (drawn at random) set to another label that field takes elsewhere in ``dataset``.

    Args:
        dataset: prompt/completion records of the task (``helpers.data.load_task``).
        seed: seeds the draw of the field and the wrong label (same seed, same pairs).
    Returns:
        ``[{"prompt", "chosen", "rejected"}, ...]``, one per record, in order.
    Raises:
        ValueError: an empty dataset, a completion that is not the task's JSON, or a field with
            one label only in the whole dataset (nothing to flip it to).
    """
    whole_number(seed, "seed", low=0)
    golds = [_gold(record, number) for number, record in enumerate(dataset)]
    if not golds:
        raise ValueError("dataset holds no records: no pairs to build")
    labels = {f: sorted({gold[f] for gold in golds}) for f in FIELDS}
    single = [f for f in FIELDS if len(labels[f]) < 2]
    if single:
        raise ValueError(f"dataset: the field(s) {single} take one label only: nothing to flip to")
    draw = random.Random(seed)
    pairs = []
    for record, gold in zip(dataset, golds, strict=True):
        field = draw.choice(FIELDS)
        wrong = draw.choice([label for label in labels[field] if label != gold[field]])
        rejected = json.dumps({**gold, field: wrong})  # the same key order and spacing as gold
        pairs.append(
            {"prompt": record["prompt"], "chosen": record["completion"], "rejected": rejected}
        )
    return pairs


def on_policy_pairs(dataset, answers: Sequence[str]) -> list[dict]:
    """Pairs from a model's own wrong answers: chosen is the reference, rejected the answer.

    Args:
        dataset: prompt/completion records of the task.
        answers: the model's answer to each record, in order (``generate_answers``).
    Returns:
        One pair per record whose answer is not exactly right (``helpers.task.score``); right
        answers and blank ones (nothing to learn against) give no pair.
    Raises:
        ValueError: ``answers`` of another length than ``dataset``, or not strings.
    """
    records = list(dataset)
    if isinstance(answers, str) or len(answers) != len(records):
        got = "a single string" if isinstance(answers, str) else f"{len(answers)} answers"
        raise ValueError(f"answers must hold one answer per record ({len(records)}), got {got}")
    pairs = []
    for number, (record, answer) in enumerate(zip(records, answers, strict=True)):
        _gold(record, number)
        if not isinstance(answer, str):
            raise ValueError(f"answers[{number}] must be a string, got {type(answer).__name__}")
        if answer.strip() and not score(answer, record["completion"])["exact"]:
            pairs.append(
                {
                    "prompt": record["prompt"],
                    "chosen": record["completion"],
                    "rejected": answer.strip(),
                }
            )
    return pairs


def to_trl_record(tokenizer: PreTrainedTokenizerBase, record: dict) -> dict:
    """A preference record as the DPO twins tokenize it.

    A text record's prompt is the raw task prompt: it becomes one user turn of the chat template,
    opening the answer (``format_prompt``), as the other chapters feed the model. A
    conversational record (lists of turns) is returned as it is: TRL applies the template itself.

    Raises:
        ValueError: a record that is not a preference record (names the field at fault).
    """
    if not isinstance(record, dict):
        raise ValueError(
            f"record must be a dict with 'prompt', 'chosen', 'rejected', got {record!r}"
        )
    for name in ("prompt", "chosen", "rejected"):
        if name not in record:
            raise ValueError(f"record: missing field {name!r} (a preference pair needs three)")
    kinds = {type(record[name]) for name in ("prompt", "chosen", "rejected")}
    if kinds == {list}:
        return {name: record[name] for name in ("prompt", "chosen", "rejected")}
    if kinds != {str}:
        raise ValueError(
            "record: 'prompt', 'chosen' and 'rejected' must be all strings or all lists"
        )
    for name in ("prompt", "chosen", "rejected"):
        if not record[name].strip():
            raise ValueError(f"record: field {name!r} is empty")
    prompt = format_prompt(tokenizer, record["prompt"])
    return {"prompt": prompt, "chosen": record["chosen"], "rejected": record["rejected"]}
