"""A prompting baseline: the task answered by the base model, zero-shot or with worked examples.

Fine-tuning has to beat what the model does when it is only asked. Zero-shot sends the task's
prompt alone; k-shot first replays k solved training examples as earlier turns of the chat
(user prompt, assistant answer), then asks. Answers are decoded greedily and scored with the
course's scorer (``helpers.task.score``): exact match, valid JSON, and each field.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from helpers.checks import whole_number
from helpers.task import FIELDS, score


def pick_shots(pool, k: int) -> list[dict]:
    """k worked examples from ``pool``, each of a different category while categories last.

    Args:
        pool: prompt/completion records (a list of dicts or a ``datasets.Dataset``).
        k: how many, 0 or more.
    Returns:
        k records, in the pool's order of first appearance.
    Raises:
        ValueError: k is negative or larger than the pool.
    """
    if not isinstance(k, int) or k < 0 or k > len(pool):
        raise ValueError(f"shots must be an integer from 0 to {len(pool)}, got {k!r}")
    records = [pool[i] for i in range(len(pool))]
    chosen, seen = [], set()
    for record in records:  # first pass: one per category
        category = record["completion"].split('"category": "')[-1].split('"')[0]
        if len(chosen) < k and category not in seen:
            chosen.append(record)
            seen.add(category)
    chosen += [r for r in records if r not in chosen][: k - len(chosen)]
    return chosen


def few_shot_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, shots: list[dict]) -> str:
    """The chat text that shows each shot as a solved turn, then asks ``prompt``."""
    messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": shot["prompt"]},
            {"role": "assistant", "content": shot["completion"]},
        ]
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def _greedy(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int,
            progress: bool = True) -> list[str]:  # fmt: skip
    """Greedy continuations of chat texts, left-padded in batches."""
    limit = getattr(model.config, "max_position_embeddings", None)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device, answers = next(model.parameters()).device, []
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="prompting", disable=not progress):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            length = batch["input_ids"].shape[1]  # (B, T)
            if limit is not None and length + max_new_tokens > limit:
                raise ValueError(
                    f"a prompt of {length} tokens plus max_new_tokens={max_new_tokens} exceeds "
                    f"the model's {limit} positions: use fewer shots"
                )
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            answers += tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


def prompting_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples,
    shots: int = 0,
    shot_pool=None,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Score the model on ``examples`` when it is only prompted (no training).

    Args:
        examples: prompt/completion records to answer.
        shots: worked examples shown before each prompt (0: zero-shot).
        shot_pool: records the shots come from (the training split; never ``examples``).
        progress: show a progress bar over the batches.
    Returns:
        ``exact_match``, ``valid_rate``, ``<field>_accuracy`` (fractions), ``n``, ``shots``,
        ``predictions`` (the answers) and ``shot_examples``.
    Raises:
        ValueError: shots > 0 without a ``shot_pool``, or a prompt longer than the model's
            context.
    """
    whole_number(max_new_tokens, "max_new_tokens")
    whole_number(batch_size, "batch_size")
    if len(examples) == 0:
        raise ValueError("prompting_exact_match: examples holds no records: nothing to score")
    if shots and shot_pool is None:
        raise ValueError("shots > 0 needs a shot_pool (e.g. the training split)")
    chosen = pick_shots(shot_pool, shots) if shots else []
    texts = [few_shot_prompt(tokenizer, ex["prompt"], chosen) for ex in examples]
    was_training = model.training
    model.eval()
    preds = _greedy(model, tokenizer, texts, max_new_tokens, batch_size, progress)
    model.train(was_training)
    scores = [score(p, ex["completion"]) for p, ex in zip(preds, examples, strict=True)]
    mean = lambda key: sum(s[key] for s in scores) / len(scores)  # noqa: E731
    return {
        "exact_match": mean("exact"),
        "valid_rate": mean("valid"),
        **{f"{f}_accuracy": mean(f) for f in FIELDS},
        "n": len(scores),
        "shots": shots,
        "predictions": preds,
        "shot_examples": chosen,
    }
