"""Score a fine-tuned model on the learner's own records, against an honest baseline.

Works for both formats: a record's context is its prompt (as one user turn) or every turn
before its last assistant turn; the reference answer is the completion or that last turn. When
every reference is a JSON object (the course task, the orders data), each field is also scored,
beside the majority baseline: always answering each field's most common training value.
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from tqdm.auto import tqdm

from helpers.task import parse_answer


def split_record(record: dict) -> tuple[list[dict], str]:
    """The turns a model sees and the answer it should give.

    Returns:
        ``(turns, answer)``; turns are chat messages ending before the answer.
    """
    if "messages" not in record:
        return [{"role": "user", "content": record["prompt"]}], record["completion"]
    turns = record["messages"]
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    return turns[:last], turns[last]["content"]


@torch.no_grad()
def generate(
    model, tokenizer, records, max_new_tokens: int = 40, batch_size: int = 16
) -> list[str]:
    """Greedy answers to each record's context (chat template, left padding), as text."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training, answers = model.training, []
    model.eval()
    try:
        for start in tqdm(range(0, len(records), batch_size), desc="generating"):
            chunk = [split_record(r)[0] for r in records[start : start + batch_size]]
            texts = [
                tokenizer.apply_chat_template(t, tokenize=False, add_generation_prompt=True)
                for t in chunk
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(next(model.parameters()).device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            answers += tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def _fields(answers: list[str]) -> list[dict] | None:
    """Each answer as a JSON object, or None when any reference is not one."""
    parsed = []
    for text in answers:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        parsed.append(value)
    return parsed


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, and per-field accuracy when the references are JSON objects.

    Exact match compares the stripped texts, or, for JSON references, every field's value (so
    that ``{"a": 1}`` and ``{"a":1}`` agree).

    Returns:
        ``exact_match`` and, for JSON references, ``valid_rate`` and ``<field>_accuracy``
        (fractions in [0, 1]).
    """
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"score: {len(predictions)} predictions for {len(references)} references "
            "(need the same non-zero number)"
        )
    n = len(references)
    result = {
        "exact_match": sum(
            p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)
        )
        / n
    }
    gold = _fields(references)
    if gold is not None:
        pred = [parse_answer(p) or {} for p in predictions]
        keys = list(dict.fromkeys(k for g in gold for k in g))
        result["valid_rate"] = sum(all(k in p for k in keys) for p in pred) / n
        exact = [all(p.get(k) == g.get(k) for k in keys) for p, g in zip(pred, gold, strict=True)]
        result["exact_match"] = sum(exact) / n
        for key in keys:
            result[f"{key}_accuracy"] = (
                sum(p.get(key) == g.get(key) for p, g in zip(pred, gold, strict=True)) / n
            )
    return result


def majority_answers(train_records, eval_size: int) -> list[str]:
    """The majority baseline's answers: each field's most common training value (JSON answers),
    else the most common training answer, repeated ``eval_size`` times."""
    answers = [split_record(r)[1] for r in train_records]
    gold = _fields(answers)
    if gold is None:
        return [Counter(answers).most_common(1)[0][0]] * eval_size
    keys = list(dict.fromkeys(k for g in gold for k in g))
    best = {k: Counter(json.dumps(g.get(k)) for g in gold).most_common(1)[0][0] for k in keys}
    return [json.dumps({k: json.loads(v) for k, v in best.items()})] * eval_size
