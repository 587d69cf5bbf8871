"""Score a fine-tuned model on the learner's own records, against an honest baseline.

Works for both formats: a record's context is its prompt (as one user turn) or every turn
before its last assistant turn; the reference answer is the completion or that last turn. When
every reference is a JSON object (the course task, the orders data), each field is also scored,
beside the majority baseline: always answering each field's most common training value.

Also what chapter 09 needs around the run: which profiles it runs on (``check_profile``, before
anything is installed or loaded), its memory plan (``memory_plan``: planned, never "fits"), the
merge chapter 07 teaches (``merge_for_export``) and the command that hands the adapter to
chapter 07 (``export_command``).
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

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


# The profiles chapter 09 runs on: the tiny model on a CPU, and one GPU with a 4-bit base.
SUPPORTED_PROFILES = ("tiny", "t4", "gpu-4gb")
_INSTEAD = {
    "t4-8b": "the 7B model is not planned for this chapter: use PROFILE='t4' (1.5B)",
    "t4x2": "this chapter trains on one GPU: use PROFILE='t4' (chapter 08 uses both T4s)",
}


def check_profile(profile) -> None:
    """Refuse, before anything is installed or loaded, a profile chapter 09 does not run on.

    Raises:
        ValueError: a profile outside ``SUPPORTED_PROFILES``; the message names the one to use.
    """
    if profile.name in SUPPORTED_PROFILES:
        return
    instead = _INSTEAD.get(
        profile.name, "use PROFILE='t4' (a 12 GB card or larger) or PROFILE='gpu-4gb'"
    )
    raise ValueError(
        f"Chapter 09 runs on the profiles {', '.join(SUPPORTED_PROFILES)}, not "
        f"{profile.name!r}: {instead}. Nothing has been installed or loaded."
    )


def memory_plan(profile) -> str:
    """One line: the planner's peak for the profile's QLoRA run against its card's budget.

    Planned by ``helpers.memory`` from the model's shapes (``helpers.hardware.card_budget``
    for the budget): never measured for this chapter, so it says "planned", not "fits".
    """
    from helpers.hardware import card_budget
    from helpers.memory import GIB
    from helpers.memory import naive as planner
    from helpers.memory.plan import profile_shape, training_run

    if profile.is_local:
        return f"profile {profile.name}: on the CPU, no GPU memory to plan"
    shape = profile_shape(profile)  # a local model in the profile's place (a shape twin) too
    run = training_run(profile, "qlora" if profile.load_in_4bit else "lora")
    budget = card_budget(profile.name)
    verdict = planner.fits(shape, run, budget.gib)
    return (
        f"profile {profile.name}: planned peak {verdict.peak_bytes / GIB:.2f} GiB for one "
        f"training model against a budget of {budget.gib:.2f} GiB (CUDA context "
        f"{budget.context_source}); planned from the shapes by helpers.memory, not measured: "
        "this chapter has not run on a GPU"
    )


def merge_for_export(model):
    """Fold the adapter into the base weights, as chapter 07 teaches.

    On a 4-bit base: ``helpers.qlora.library.merge_and_dequantize`` (dequantize the base to the
    compute dtype, then merge into that float copy; never ``merge_and_unload`` on the 4-bit
    weights). On a float base there is nothing to dequantize: peft's ``merge_and_unload``.

    Returns:
        A plain transformers model (the peft wrapper is consumed).
    """
    from helpers.qlora import library as qlora

    base = model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False):
        return qlora.merge_and_dequantize(model)
    return model.merge_and_unload()


def export_command(profile, adapter_dir: Path, chapters_dir: Path) -> str:
    """The papermill command that runs chapter 07 on this adapter (``ADAPTER_DIR``)."""
    adapter_dir, chapters_dir = Path(adapter_dir).resolve(), Path(chapters_dir).resolve()
    return shlex.join(
        [
            "papermill",
            str(chapters_dir / "07_deploy.ipynb"),
            "07_deploy_my_adapter.ipynb",
            "-p", "PROFILE", profile.name,
            "-p", "ADAPTER_DIR", str(adapter_dir),
        ]
    )  # fmt: skip
