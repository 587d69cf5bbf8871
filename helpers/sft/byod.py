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

from helpers.evaluation.stats import wilson_interval
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


def outcomes(predictions: list[str], references: list[str]) -> dict[str, list[bool]]:
    """Per record, whether each metric was right: the counts behind ``score``.

    Exact match compares the stripped texts, or, for JSON references, every field's value (so
    that ``{"a": 1}`` and ``{"a":1}`` agree).

    Returns:
        ``exact_match`` and, for JSON references, ``valid_rate`` and ``<field>_accuracy``: one
        bool per record each.
    Raises:
        ValueError: not the same non-zero number of predictions and references.
    """
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"score: {len(predictions)} predictions for {len(references)} references "
            "(need the same non-zero number)"
        )
    pairs = list(zip(predictions, references, strict=True))
    result = {"exact_match": [p.strip() == r.strip() for p, r in pairs]}
    gold = _fields(references)
    if gold is not None:
        pred = [parse_answer(p) or {} for p in predictions]
        keys = list(dict.fromkeys(k for g in gold for k in g))
        both = list(zip(pred, gold, strict=True))
        result["valid_rate"] = [all(k in p for k in keys) for p in pred]
        result["exact_match"] = [all(p.get(k) == g.get(k) for k in keys) for p, g in both]
        for key in keys:
            result[f"{key}_accuracy"] = [p.get(key) == g.get(key) for p, g in both]
    return result


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, and per-field accuracy when the references are JSON objects.

    Returns:
        The rates of ``outcomes`` (fractions in [0, 1]), under the same names.
    """
    return {name: sum(hits) / len(hits) for name, hits in outcomes(predictions, references).items()}


def against(hits: list[bool], rate: float, confidence: float = 0.95) -> dict:
    """A verdict on a measured rate against a fixed one (a majority rate, chance), with the
    Wilson interval (chapter 05's ``helpers.evaluation.stats``) of the measured rate.

    Returns:
        ``rate``, ``low``, ``high`` and ``verdict``: "above" when the whole interval is above
        ``rate``, "below" when it is below, else "not distinguishable" (the interval holds it).
    """
    low, high = wilson_interval(sum(hits), len(hits), confidence)
    verdict = "above" if low > rate else "below" if high < rate else "not distinguishable from"
    return {"rate": sum(hits) / len(hits), "low": low, "high": high, "verdict": verdict}


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
