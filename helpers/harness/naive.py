"""The course's own scoring of the two harness tasks, with chapter 05's functions.

Dimensions: n records, C choices of a question, B prompts in a batch, T prompt tokens, S new
tokens.

- ``evaluate_multiple_choice``: each choice scored by its summed log-likelihood after the
  prompt (``helpers.evaluation.naive.score_choices``), the pick by lm-evaluation-harness'
  normalisations (``mc_predictions``): ``acc`` the largest sum, ``acc_norm`` the largest sum
  per character of the choice.
- ``evaluate_generation``: greedy answers by the hand-written decoding loop with a KV cache
  (``greedy_generate``), exact match of the decoded answer with the reference.

``library.py`` runs the same two tasks through lm-evaluation-harness, with the same names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from helpers.evaluation import naive as chapter05
from helpers.harness import (
    MAX_NEW_TOKENS,
    adapter_loaded,
    read_generation,
    read_multiple_choice,
    render_prompt,
)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    limit: int | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 16,
) -> dict:
    """Multiple-choice accuracy by log-likelihood, one forward pass per choice.

    The prompt is the question as a user turn of the chat template, the assistant's turn
    opened; each choice's tokens follow it directly (chapter 05's ``mc_inputs``).

    Args:
        path: JSONL of ``{"question", "choices", "answer"}`` records.
        limit: score the first ``limit`` records; None: all.
        adapter: a saved peft adapter folder to evaluate on top of ``model`` (taken off after).
        batch_size: unused here (one forward per choice); kept so both twins take the same
            arguments.
    Returns:
        ``{"acc", "acc_norm"}`` (fractions), ``"n"``, ``"loglikelihoods"`` (n lists of C summed
        log-probabilities), ``"correct"`` and ``"correct_norm"`` (n booleans each).
    """
    items = read_multiple_choice(path, limit)
    lls, correct, correct_norm = [], [], []
    with adapter_loaded(model, adapter) as scored:
        for item in items:
            context = _ids(tokenizer, render_prompt(tokenizer, None, item["question"]))
            choices = [_ids(tokenizer, c) for c in item["choices"]]
            logprob, _ = chapter05.score_choices(scored, context, choices)  # (C,)
            picks = chapter05.mc_predictions(logprob, item["choices"])
            lls.append(logprob.tolist())
            correct.append(picks["acc"] == item["answer"])
            correct_norm.append(picks["acc_norm"] == item["answer"])
    return {
        "acc": sum(correct) / len(items),
        "acc_norm": sum(correct_norm) / len(items),
        "n": len(items),
        "loglikelihoods": lls,
        "correct": correct,
        "correct_norm": correct_norm,
    }


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to B rendered prompts, left-padded into one batch."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    new = chapter05.greedy_generate(
        model,
        batch["input_ids"].to(device),  # (B, T)
        batch["attention_mask"].to(device),
        max_new_tokens,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )  # (B, S)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def evaluate_generation(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    limit: int | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """Exact match of greedy answers with the reference answers.

    A record's prompt is its system turn (if any) and user turn through the chat template; the
    answer is decoded without special tokens and compared as is (no stripping, no case
    folding), as lm-evaluation-harness' ``exact_match`` does with its defaults.

    Args:
        path: JSONL of prompt/completion or messages records (one exchange each).
        limit, adapter: as in ``evaluate_multiple_choice``.
        batch_size: prompts per left-padded batch.
        max_new_tokens: the longest answer generated; it stops earlier at the eos token.
    Returns:
        ``{"exact_match"}`` (a fraction), ``"n"``, ``"predictions"``, ``"references"``,
        ``"correct"`` (n booleans).
    """
    items = read_generation(path, limit)
    prompts = [render_prompt(tokenizer, i["system"], i["user"]) for i in items]
    predictions = []
    with adapter_loaded(model, adapter) as scored:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            predictions += _generate(scored, tokenizer, chunk, max_new_tokens)
    references = [i["answer"] for i in items]
    correct = [p == r for p, r in zip(predictions, references, strict=True)]
    return {
        "exact_match": sum(correct) / len(items),
        "n": len(items),
        "predictions": predictions,
        "references": references,
        "correct": correct,
    }
