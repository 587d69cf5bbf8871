"""An evaluation harness over local JSONL files: the course's own scoring against
lm-evaluation-harness, on the same items.

Two twins with the same public names, imported explicitly:

    from helpers.harness import naive, library

``naive`` scores with the course's chapter-05 functions (``helpers.evaluation.naive``:
``score_choices``, ``mc_predictions``, ``greedy_generate``); ``library`` writes the same two
tasks as lm-evaluation-harness tasks (YAML files in ``helpers/harness/tasks/``, ``dataset_path:
json`` over the local file, no hub) and runs them through ``lm_eval.simple_evaluate`` on the
model already in memory. Both take the same arguments and return the same keys:

- ``evaluate_multiple_choice(model, tokenizer, path, ...)``: a file of
  ``{"question", "choices", "answer"}`` records; accuracy by the summed log-likelihood of each
  choice (``acc``) and by that sum divided by the choice's length in characters (``acc_norm``).
- ``evaluate_generation(model, tokenizer, path, ...)``: a prompt/completion or messages file;
  greedy answers and their exact match with the reference answer.

This module holds what both twins share: reading and checking the files (errors name the
file, the line and the field), the prompt each record becomes, and loading an adapter for the
length of one evaluation. ``helpers.harness.benchmark`` runs a real benchmark from the hub
(library only: the course has no naive MMLU).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from helpers.data import _text_lines, load_jsonl

PUBLIC_NAMES = ("evaluate_multiple_choice", "evaluate_generation")
MAX_NEW_TOKENS = 64  # generation budget of both twins: the answers of both datasets fit in 40


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for every non-blank line, read as ``helpers.data`` reads
    (UTF-8 or UTF-16, gzip or not), with errors that name the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a JSONL file)")
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")
        yield number, record


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive whole number of records or None, got {limit!r}")


def _check_mc(record: dict, where: str) -> None:
    """A multiple-choice record: a question, two or more distinct choices, the right index."""
    for name in ("question", "choices", "answer"):
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r} (need question, choices, answer)")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"{where}: field 'choices' must be a list of at least two strings")
    if not all(isinstance(c, str) and c for c in choices) or len(set(choices)) != len(choices):
        raise ValueError(f"{where}: field 'choices' must hold distinct non-empty strings")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: field 'answer' must be the index of the right choice, 0..{len(choices) - 1}"
            f", got {answer!r}"
        )


def read_multiple_choice(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` records of a multiple-choice file, checked.

    Args:
        path: JSONL of ``{"question": str, "choices": [str, ...], "answer": int}`` (other
            fields, such as ``field``, are kept and ignored).
        limit: how many records from the top; None: all.
    Returns:
        The records, in file order.
    Raises:
        FileNotFoundError, or ValueError naming the file, the line and the field at fault (or
        the file, when it holds no records).
    """
    _check_limit(limit)
    path = Path(path).expanduser()
    items = []
    for number, record in _lines(path):
        _check_mc(record, f"{path}, line {number}")
        items.append(record)
        if len(items) == limit:
            break
    if not items:  # an accuracy over no questions is 0 / 0
        raise ValueError(f"{path}: the file holds no records (expected question/choices/answer)")
    return items


def _turns(record: dict, where: str) -> dict:
    """A messages record as system (or None), user and answer: one exchange to evaluate."""
    turns = record["messages"]
    roles = [t["role"] for t in turns]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise ValueError(
            f"{where}: field 'messages' has roles {roles}; evaluation needs one exchange: "
            "[system,] user, assistant"
        )
    system = turns[0]["content"] if roles[0] == "system" else None
    return {"system": system, "user": turns[-2]["content"], "answer": turns[-1]["content"]}


def to_exchange(record: dict, where: str = "record") -> dict:
    """One prompt/completion or messages record as ``{"system", "user", "answer"}``.

    ``system`` is None for prompt/completion records and for conversations without a system
    turn. Raises ValueError (naming ``where``) for a conversation that is not one exchange.
    """
    if "messages" in record:
        return _turns(record, where)
    return {"system": None, "user": record["prompt"], "answer": record["completion"]}


def read_generation(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` records of a prompt/completion or messages file, as exchanges.

    Returns:
        ``[{"system": str | None, "user": str, "answer": str}, ...]`` in file order.
    Raises:
        FileNotFoundError, or ValueError naming the file, the line and the field at fault.
    """
    _check_limit(limit)
    path = Path(path).expanduser()
    load_jsonl(path)  # the course's checks of a training file: format, roles, types
    items = []
    for number, record in _lines(path):
        items.append(to_exchange(record, f"{path}, line {number}"))
        if len(items) == limit:
            break
    return items


def chat_turns(system: str | None, user: str) -> list[dict[str, str]]:
    """The turns a prompt is made of: an optional system turn, then the user's."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def render_prompt(tokenizer: PreTrainedTokenizerBase, system: str | None, user: str) -> str:
    """The text the model continues: the chat template with the assistant's turn opened.

    Without a system turn this is ``helpers.task.format_prompt`` (chapter 05's prompts).
    """
    turns = chat_turns(system, user)
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


@contextmanager
def adapter_loaded(model: torch.nn.Module, adapter: str | Path | None):
    """Yield the model with a saved peft adapter on top, and take it off afterwards.

    ``PeftModel.from_pretrained`` puts the adapter's layers into the model in place; ``unload``
    takes them out again without merging, so the caller's model is the base model again.

    Args:
        adapter: a folder saved by ``save_pretrained`` (``adapter_config.json`` inside), or None
            for the model as it is.
    Raises:
        FileNotFoundError: no adapter there. ValueError: the model already carries adapters.
    """
    if adapter is None:
        yield model
        return
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json, so no saved adapter here")
    if isinstance(model, PeftModel):
        raise ValueError("adapter= given, but the model already carries adapters: pass its base")
    wrapped = PeftModel.from_pretrained(model, folder).eval()
    try:
        yield wrapped
    finally:
        wrapped.unload()
