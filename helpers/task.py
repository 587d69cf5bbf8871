"""The course task: tag a customer review with JSON (category, sentiment, urgency).

Prompt formatting, answer parsing, scoring, and a batched greedy evaluation through
``model.generate``. Chapter 05 rebuilds the decoding loop by hand and checks it against this.
"""

from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from helpers.checks import whole_number

FIELDS = ("category", "sentiment", "urgency")


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as one user turn of the tokenizer's chat template, opening the answer."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def parse_answer(text: str) -> dict | None:
    """The JSON object in a model's answer, or None if there is none.

    Takes the first ``{...}`` span, so a model that adds words around its JSON still parses.
    """
    start, end = text.find("{"), text.find("}", text.find("{") + 1)
    if start < 0 or end < 0:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def score(pred_text: str, gold_text: str) -> dict[str, bool]:
    """Compare one answer with the reference.

    Returns:
        ``valid`` (JSON with the three fields as strings), ``exact`` (all three right), and one
        boolean per field.
    """
    gold, pred = json.loads(gold_text), parse_answer(pred_text) or {}
    valid = all(isinstance(pred.get(f), str) for f in FIELDS)
    fields = {f: pred.get(f) == gold[f] for f in FIELDS}
    return {"valid": valid, "exact": valid and all(fields.values()), **fields}


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 40,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to raw prompts (the chat template is applied here).

    Batches are left-padded so that every prompt ends where generation starts.
    """
    whole_number(max_new_tokens, "max_new_tokens")
    whole_number(batch_size, "batch_size")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    device = next(model.parameters()).device
    try:
        for start in tqdm(
            range(0, len(prompts), batch_size), desc="generating", disable=not progress
        ):
            texts = [format_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]  # (B, new)
            answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


def evaluate(model, tokenizer, dataset, n: int | None = None, **generate_kwargs) -> dict:
    """Exact match, valid-output rate and per-field accuracy on the first ``n`` records.

    Returns:
        A dict with ``exact_match``, ``valid_rate``, ``<field>_accuracy`` (fractions in [0, 1]),
        ``n``, and ``predictions`` (the generated texts).
    """
    if n is not None:
        whole_number(n, "n")
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset holds no records: nothing to score")
    records = dataset.select(range(min(n or len(dataset), len(dataset))))
    was_training = model.training
    model.eval()
    preds = generate_answers(model, tokenizer, records["prompt"], **generate_kwargs)
    model.train(was_training)
    scores = [score(p, g) for p, g in zip(preds, records["completion"], strict=True)]
    mean = lambda key: sum(s[key] for s in scores) / len(scores)  # noqa: E731
    return {
        "exact_match": mean("exact"),
        "valid_rate": mean("valid"),
        **{f"{f}_accuracy": mean(f) for f in FIELDS},
        "n": len(scores),
        "predictions": preds,
    }
