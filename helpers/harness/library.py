"""The two harness tasks run by lm-evaluation-harness: the same public names as ``naive``.

The tasks are the YAML files in ``helpers/harness/tasks/``: ``dataset_path: json`` reads the
local JSONL file through ``datasets`` (set in ``data_files`` here, at run time), so no hub is
needed. ``lm_eval.simple_evaluate`` runs them on the model already in memory, wrapped in the
harness' Hugging Face model class (``HFLM(pretrained=model, tokenizer=tokenizer)``) with the
tokenizer's chat template applied (``apply_chat_template=True``), as chapter 05 prompts.

Which harness metric is which course number:

- ``acc``: the choice with the largest summed log-likelihood (chapter 05's ``mc_sum``).
- ``acc_norm``: that log-likelihood divided by the choice's length in **characters**
  (chapter 05's ``mc_norm``); not per token.
- One difference in the log-likelihoods themselves: the harness moves trailing whitespace of
  the prompt into the continuation (``lm_eval/api/model.py``, ``_encode_pair``), and the chat
  template ends the prompt with a newline, so each choice's log-likelihood also counts
  log p(newline | prompt). That term is the same for every choice of a question (the picks by
  ``acc`` cannot change) and the model puts nearly all its probability on that newline (the
  template always writes it), so it is tiny; ``tests/test_harness.py`` measures it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from helpers.harness import (
    MAX_NEW_TOKENS,
    adapter_loaded,
    read_generation,
    read_multiple_choice,
    to_exchange,
)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MC_TASK, GENERATION_TASK = "course_multiple_choice", "course_generation"


def task_config(task: str, path: str | Path) -> dict:
    """A task's YAML file as a config dict, pointed at one local JSONL file.

    Args:
        task: ``"course_multiple_choice"`` or ``"course_generation"`` (a file in TASKS_DIR).
        path: the JSONL file to evaluate (made absolute, so the working folder does not matter).
    Returns:
        The dict ``simple_evaluate(tasks=[...])`` accepts; the generation task gets its
        ``process_docs`` function here (a Python callable cannot live in a plain YAML file).
    """
    if task not in (MC_TASK, GENERATION_TASK):
        raise ValueError(f"unknown task {task!r}: use {MC_TASK!r} or {GENERATION_TASK!r}")
    source = TASKS_DIR / f"{task}.yaml"
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    config["dataset_kwargs"]["data_files"]["test"] = str(Path(path).expanduser().resolve())
    if task == GENERATION_TASK:
        config["process_docs"] = _exchanges
        fields = {"system", "user", "answer"}  # what _exchanges makes of each record
    else:
        fields = set.intersection(*(set(r) for r in read_multiple_choice(path)))
    _check_doc_fields(config, fields, source)
    return config


def _check_doc_fields(config: dict, fields: set[str], source: Path) -> None:
    """Every record field a task's ``doc_to_*`` names must exist: the harness reads a name it
    cannot find as a literal template (``doc_to_target: answr`` becomes the text "answr"), and
    the task then scores 0.00 without a word."""
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        value = config.get(key)
        if not isinstance(value, str):
            continue
        names = re.findall(r"\{\{\s*(\w+)", value) if "{{" in value else [value]
        for name in names:
            if name not in fields:
                raise ValueError(
                    f"{source}: {key}: {value!r} names the field {name!r}, which the records "
                    f"do not have (they have {sorted(fields)})"
                )


def _exchanges(dataset):
    """Each record as {"system", "user", "answer"} ("" for no system turn), as the naive twin."""

    def one(record: dict) -> dict:
        exchange = to_exchange(record)
        return {**exchange, "system": exchange["system"] or ""}

    return dataset.map(one, remove_columns=dataset.column_names)


@contextlib.contextmanager
def _quiet():
    """The harness logs every step at INFO, warns that an in-memory model skips its loading
    options (expected here), and draws plain-text progress bars on stderr (as does ``datasets``
    reading the file): calls on the course's files take seconds, so keep the learner's output
    to errors, which are raised, not printed."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _lm_eval():
    """The harness' three entry points, or an ImportError that says how to install it."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            f"lm-evaluation-harness is not installed ({err}): pip install 'lm-eval>=0.4.13,<0.5' "
            "(the course's extra: pip install -e '.[harness]')"
        ) from None
    return simple_evaluate, HFLM, TaskManager


def _run(model, tokenizer, config: dict, limit, adapter, batch_size: int) -> tuple[dict, list]:
    """simple_evaluate on one task; returns its aggregate metrics and its samples by doc_id."""
    simple_evaluate, HFLM, TaskManager = _lm_eval()

    with adapter_loaded(model, adapter) as scored, _quiet():
        # add_bos_token=False: the course's prompts carry no BOS (the tiny tokenizer has none;
        # a real model's chat template writes its own)
        lm = HFLM(
            pretrained=scored, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=False
        )
        out = simple_evaluate(
            model=lm,
            tasks=[config],
            task_manager=TaskManager(include_defaults=False),
            limit=limit,
            apply_chat_template=True,
            log_samples=True,
            bootstrap_iters=0,  # no standard errors: chapter 05 computes intervals itself
            # zero-shot greedy scoring draws no random numbers: leave the learner's seeds alone
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    name = config["task"]
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return out["results"][name], samples


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    limit: int | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 16,
) -> dict:
    """Multiple-choice accuracy by lm-evaluation-harness (task ``course_multiple_choice``).

    Args:
        path: JSONL of ``{"question", "choices", "answer"}`` records.
        limit: the first ``limit`` records (the harness' ``limit``); None: all.
        adapter: a saved peft adapter folder, put on ``model`` for this call and taken off.
        batch_size: log-likelihood requests per forward pass.
    Returns:
        As the naive twin: ``acc``, ``acc_norm``, ``n``, ``loglikelihoods`` (n lists of C),
        ``correct``, ``correct_norm``; plus ``seconds`` (wall time of the harness call).
    """
    items = read_multiple_choice(path, limit)  # the same clear errors as the naive twin
    start = time.perf_counter()
    metrics, samples = _run(
        model, tokenizer, task_config(MC_TASK, path), limit, adapter, batch_size
    )
    seconds = time.perf_counter() - start
    lls = [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]  # (n, C)
    if len(lls) != len(items):
        raise RuntimeError(f"the harness scored {len(lls)} of {len(items)} questions in {path}")
    return {
        "acc": float(metrics["acc,none"]),
        "acc_norm": float(metrics["acc_norm,none"]),
        "n": len(lls),
        "loglikelihoods": lls,
        "correct": [bool(s["acc"]) for s in samples],
        "correct_norm": [bool(s["acc_norm"]) for s in samples],
        "seconds": seconds,
    }


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
    """Exact match of greedy answers by lm-evaluation-harness (task ``course_generation``).

    Args:
        path: JSONL of prompt/completion or messages records (one exchange each).
        limit, adapter, batch_size: as in ``evaluate_multiple_choice``.
        max_new_tokens: the harness' ``max_gen_toks``; generation also stops at eos.
    Returns:
        As the naive twin: ``exact_match``, ``n``, ``predictions``, ``references``,
        ``correct``; plus ``seconds``.
    """
    items = read_generation(path, limit)
    config = task_config(GENERATION_TASK, path)
    config["generation_kwargs"]["max_gen_toks"] = max_new_tokens
    start = time.perf_counter()
    metrics, samples = _run(model, tokenizer, config, limit, adapter, batch_size)
    seconds = time.perf_counter() - start
    predictions = [s["filtered_resps"][0] for s in samples]
    references = [s["target"] for s in samples]
    if len(predictions) != len(items):
        raise RuntimeError(f"the harness answered {len(predictions)} of {len(items)} in {path}")
    return {
        "exact_match": float(metrics["exact_match,none"]),
        "n": len(predictions),
        "predictions": predictions,
        "references": references,
        "correct": [bool(s["exact_match"]) for s in samples],
        "seconds": seconds,
    }
