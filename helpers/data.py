"""The task data: read and validate JSONL, tokenize with the chat template, collate batches.

Records use one of the two formats that TRL and ``datasets`` read as they are::

    {"prompt": "Tag this review ...\\nReview: ...", "completion": "{\\"category\\": ...}"}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Only the completion, or the assistant turns, are learned. Bring your own data in either format
(UTF-8 with or without a byte order mark, UTF-16, or gzip-compressed); ``load_jsonl`` checks
every line and names the file, the line and the field at fault.

Preference tuning (DPO) reads TRL's preference format, as text or as conversations::

    {"prompt": "Tag this review ...", "chosen": "{\\"category\\": ...}", "rejected": "{...}"}
    {"prompt": [{"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", ...}]}
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from pathlib import Path

import torch
from datasets import Dataset, DatasetInfo
from transformers import PreTrainedTokenizerBase

from helpers.checks import whole_number
from helpers.constants import IGNORE_INDEX  # chapters import it from here too
from helpers.paths import TASK_DIR
from helpers.task import format_prompt

REQUIRED_FIELDS = ("prompt", "completion")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")
# Files that are not text, by their first bytes: what to tell the learner.
SIGNATURES = {
    b"PK\x03\x04": "a zip archive",
    b"BZh": "a bzip2-compressed file",
    b"\xfd7zXZ\x00": "an xz-compressed file",
    b"\x28\xb5\x2f\xfd": "a zstd-compressed file",
    b"PAR1": "a Parquet file (read it with datasets.load_dataset('parquet', ...))",
    b"SQLite format 3": "an SQLite database",
}


def _check_text(value: object, where: str, field: str) -> None:
    """Every string in a value must be encodable (no lone surrogate escape like \\ud800)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = value[err.start]
            raise ValueError(
                f"{where}: field {field!r} holds a lone surrogate \\u{ord(bad):04x} at "
                f"character {err.start}, which is not a character: fix that escape"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where, field)
            _check_text(item, where, field)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where, field)


def _check_string(record: dict, name: str, where: str) -> None:
    value = record[name]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")


def _check_messages(turns: object, where: str) -> None:
    """A TRL conversation: a list of {"role", "content"} turns with at least one assistant."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: field 'messages' must be a non-empty list of turns")
    for number, turn in enumerate(turns):
        at = f"{where}: messages[{number}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ValueError(f"{at} must be an object with 'role' and 'content'")
        if turn["role"] not in ROLES:
            raise ValueError(f"{at}: role {turn['role']!r} is not one of {ROLES}")
        if not isinstance(turn["content"], str):
            raise ValueError(f"{at}: 'content' must be a string")
        if turn["role"] == "assistant" and not turn["content"].strip():
            raise ValueError(f"{at}: an assistant turn's 'content' is empty: nothing to learn")
    if not any(t["role"] == "assistant" for t in turns):
        raise ValueError(f"{where}: 'messages' has no assistant turn: nothing to learn")


def _check_turns(turns: object, where: str, field: str, roles: tuple[str, ...]) -> None:
    """One side of a conversational preference pair: a non-empty list of turns in ``roles``."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: field {field!r} must be a non-empty list of turns")
    for number, turn in enumerate(turns):
        at = f"{where}: {field}[{number}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ValueError(f"{at} must be an object with 'role' and 'content'")
        if turn["role"] not in roles:
            raise ValueError(f"{at}: role {turn['role']!r} is not one of {roles}")
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise ValueError(f"{at}: 'content' must be a non-empty string")


def _check_preference(record: dict, where: str) -> None:
    """TRL's preference record: ``prompt``, ``chosen``, ``rejected``, all three strings or all
    three lists of turns (the prompt ends on a user turn, each answer is assistant turns)."""
    for name in PREFERENCE_FIELDS:
        if name not in record:
            raise ValueError(
                f"{where}: missing field {name!r} (a preference line needs "
                f"{', '.join(map(repr, PREFERENCE_FIELDS))})"
            )
    if all(isinstance(record[name], str) for name in PREFERENCE_FIELDS):
        for name in PREFERENCE_FIELDS:
            _check_string(record, name, where)
        return
    if not all(isinstance(record[name], list) for name in PREFERENCE_FIELDS):
        kinds = {name: type(record[name]).__name__ for name in PREFERENCE_FIELDS}
        raise ValueError(
            f"{where}: 'prompt', 'chosen' and 'rejected' must be all strings or all lists of "
            f"turns, got {kinds}"
        )
    _check_turns(record["prompt"], where, "prompt", ROLES)
    if record["prompt"][-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt's last turn must be a user turn (the question)")
    for name in ("chosen", "rejected"):
        _check_turns(record[name], where, name, ("assistant",))


def _check_record(record: object, where: str) -> dict:
    """Return the record if it is a valid prompt/completion, messages or preference object;
    raise if not."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "chosen" in record or "rejected" in record:
        _check_preference(record, where)
    elif "messages" in record:
        _check_messages(record["messages"], where)
    else:
        for name in REQUIRED_FIELDS:
            if name not in record:
                raise ValueError(
                    f"{where}: missing field {name!r} (each line needs "
                    f"{' and '.join(map(repr, REQUIRED_FIELDS))}, or 'messages')"
                )
            _check_string(record, name, where)
    for name, value in record.items():
        _check_text(value, where, name)
    return record


def _json_type(value: object) -> str | None:
    """JSON's name for a value's type, with a list's element types (None for null)."""
    if value is None:
        return None
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
    if isinstance(value, list):
        inner = sorted({t for t in map(_json_type, value) if t})
        return f"list of {' and '.join(inner) or 'nothing'}"
    return kind.get(type(value), type(value).__name__)


class _FieldTypes:
    """Remember each field's type and line; a field whose type changes is a ValueError."""

    def __init__(self, path: Path):
        self.path, self.seen = path, {}

    def check(self, record: dict, number: int) -> None:
        for name, value in record.items():
            kind = _json_type(value)
            if kind is None:
                continue
            first = self.seen.setdefault(name, (kind, number))
            if first[0] != kind:
                raise ValueError(
                    f"{self.path}, line {number}: field {name!r} is a {kind}, but on line "
                    f"{first[1]} it is a {first[0]}: a column needs one type"
                )


def _decompress(path: Path, raw: bytes) -> bytes:
    """The file's bytes, gunzipped if it is gzip; a ValueError for other non-text files."""
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: a gzip file that is damaged or cut short ({err})") from None
    for magic, what in SIGNATURES.items():
        if raw.startswith(magic):
            raise ValueError(f"{path}: {what}, not JSONL text: convert it to a .jsonl file")
    return raw


def _utf16_lines(path: Path, raw: bytes) -> list[str]:
    """Decode a UTF-16 file (it starts with a byte order mark) into lines."""
    try:
        return raw.decode("utf-16").split("\n")
    except UnicodeDecodeError as err:
        line = raw[: err.start].decode("utf-16", errors="replace").count("\n") + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-16 ({err.reason})") from None


def _text_lines(path: Path) -> list[str]:
    """The file's lines as text: UTF-8 (BOM or not), UTF-16 with a BOM, or gzip of either.

    Raises:
        ValueError: bytes that are not text in these encodings, with file and line.
    """
    raw = _decompress(path, path.read_bytes())
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _utf16_lines(path, raw)
    if b"\x00" in raw[:4096]:
        raise ValueError(
            f"{path}: holds NUL bytes: UTF-16 without a byte order mark, or not a text file. "
            "Save it as UTF-8."
        )
    lines = raw.removeprefix(codecs.BOM_UTF8).split(b"\n")
    text = []
    for number, line in enumerate(lines, start=1):
        try:
            text.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}, line {number}: not valid UTF-8 (byte 0x{line[err.start]:02x} at "
                f"byte {err.start + 1} of the line): save the file as UTF-8"
            ) from None
    return text


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a JSONL file: name a file in it")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected a JSONL of prompt/completion or messages records)"
        )
    return path


def load_jsonl(path: str | Path) -> Dataset:
    """Read a JSONL file of prompt/completion, messages or preference records, checking every
    line.

    Args:
        path: a ``.jsonl`` file (``~`` allowed), one JSON object per line (blank lines are
            skipped); UTF-8 with or without a BOM, UTF-16 with a BOM, or gzip of either.
    Returns:
        A Dataset with the columns ``prompt`` and ``completion``, or ``messages``, or
        ``prompt``, ``chosen`` and ``rejected`` (and any extra fields).
    Raises:
        FileNotFoundError: no such file. IsADirectoryError: the path is a folder.
        ValueError: the first bad line, as ``<file>, line <n>: <what is wrong>``.
    """
    path = _check_path(path)
    records, types, formats = [], _FieldTypes(path), {}
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        record = _check_record(record, where)
        kind = "messages" if "messages" in record else "prompt/completion"
        if "chosen" in record or "rejected" in record:
            kind = "preference"
        formats.setdefault(kind, number)
        if len(formats) > 1:
            other = next(k for k in formats if k != kind)
            raise ValueError(
                f"{where}: a {kind} record, but line {formats[other]} is {other}: use one format"
            )
        types.check(record, number)
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the file holds no records")
    try:
        return Dataset.from_list(records, info=DatasetInfo(description=f"file: {path}"))
    except Exception as err:  # pyarrow's errors name no file
        raise ValueError(f"{path}: the records do not form one table ({err})") from None


def load_task(split: str) -> Dataset:
    """One split of the course task: "train", "valid" or "test"."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Unknown split {split!r}: use 'train', 'valid' or 'test'.")
    return load_jsonl(TASK_DIR / f"{split}.jsonl")


def _template(tokenizer: PreTrainedTokenizerBase, turns: list[dict], opening: bool) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=opening)


def _segments(tokenizer: PreTrainedTokenizerBase, record: dict) -> list[tuple[str, str]]:
    """(context text, answer text) per answer: one for prompt/completion, one per assistant
    turn of a conversation. Each context is the chat template's text since the last answer."""
    if "messages" not in record:
        pairs = [(format_prompt(tokenizer, record["prompt"]), record["completion"])]
    else:
        turns, done, pairs = list(record["messages"]), "", []
        eos = tokenizer.eos_token or ""
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            context = _template(tokenizer, turns[:i], opening=True)
            if not context.startswith(done):
                raise ValueError(
                    "this tokenizer's chat template renders earlier turns differently in later "
                    "prompts: give one assistant turn per record"
                )
            # the answer's eos was appended as a token: do not tokenize the template's copy again
            pairs.append((context[len(done) :].removeprefix(eos), turn["content"]))
            done = context + turn["content"]
    if not pairs or any(not isinstance(a, str) or not a.strip() for _, a in pairs):
        raise ValueError(
            "encode: the record's completion (or an assistant turn) is empty: nothing to learn "
            "but the eos token; drop the record (load_jsonl refuses it too)"
        )
    return pairs


# Tokenizing a long text costs time and memory in its length, and ``encode`` keeps at most
# ``max_seq_len`` tokens: so it tokenizes a window of the text big enough for them, at first
# WINDOW_CHARS characters per token wanted, doubled until the window gives enough tokens.
# The window is cut where a byte-level BPE pre-tokenizer (GPT-2's and Qwen2's regex) always
# splits, before a space that follows a non-space character, so the tokens kept are those of
# the whole text; CUT_MARGIN tokens next to the cut are dropped as well, for tokenizers that
# split otherwise (and for a text with no such space near the cut).
WINDOW_CHARS, CUT_MARGIN = 8, 16
_SPLIT = re.compile(r"(?<=\S) ")


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _tail_ids(tokenizer: PreTrainedTokenizerBase, text: str, n: int) -> list[int]:
    """The last ``n`` ids of ``text``'s tokens (all of them if fewer), from a window of its end."""
    chars = (n + CUT_MARGIN) * WINDOW_CHARS
    while chars < len(text):
        start = len(text) - chars
        split = _SPLIT.search(text, start, start + chars // 2)
        ids = _ids(tokenizer, text[split.start() if split else start :])
        if len(ids) >= n + CUT_MARGIN:
            return ids[len(ids) - n :]
        chars *= 2
    return _ids(tokenizer, text)[-n:] if n else []


def head_text(tokenizer: PreTrainedTokenizerBase, text: str, n: int) -> str:
    """A start of ``text`` whose tokens begin with the first ``n`` tokens of the whole text
    (the whole text if it is short): what a tokenizer that keeps ``n`` tokens needs to see."""
    chars = (n + CUT_MARGIN) * WINDOW_CHARS
    while chars < len(text):
        split = _SPLIT.search(text, chars, chars + chars // 2)
        head = text[: split.start() if split else chars]
        if len(_ids(tokenizer, head)) >= n + CUT_MARGIN:
            return head
        chars *= 2
    return text


def _head_ids(tokenizer: PreTrainedTokenizerBase, text: str, n: int) -> list[int]:
    """The first ``n`` ids of ``text``'s tokens (all of them if fewer), from a window of its start."""
    return _ids(tokenizer, head_text(tokenizer, text, n))[:n]


def encode(tokenizer: PreTrainedTokenizerBase, record: dict, max_seq_len: int) -> dict:
    """Token ids and labels of one record; labels are IGNORE_INDEX except on the answers.

    The answers are the completion, or each assistant turn of ``messages``, with an eos each.
    A sequence too long loses its start (the last answer is kept whole up to ``max_seq_len``),
    so the model still learns to answer. Only the text near what is kept is tokenized (see
    ``WINDOW_CHARS``): a record of many megabytes costs what its ``max_seq_len`` tokens cost.

    Raises:
        ValueError: ``max_seq_len`` below 1, or an empty completion or assistant turn.
    """
    whole_number(max_seq_len, "max_seq_len")
    segments = _segments(tokenizer, record)
    eos = tokenizer.eos_token_id
    last = _head_ids(tokenizer, segments[-1][1], max_seq_len) + [eos]  # the last answer
    if len(last) >= max_seq_len:  # the last answer alone fills the window: its start
        return {"input_ids": last[:max_seq_len], "labels": last[:max_seq_len]}
    parts = [part for c, a in segments for part in ((c, False), (a, True), (None, True))]
    ids, labels = list(last), list(last)
    for text, learned in reversed(parts[:-2]):  # from the end, until the window is full
        room = max_seq_len - len(ids)
        if room == 0:
            break
        piece = [eos] if text is None else _tail_ids(tokenizer, text, room)  # None: an eos
        ids = piece + ids
        labels = (piece if learned else [IGNORE_INDEX] * len(piece)) + labels
    return {"input_ids": ids, "labels": labels}


class Collator:
    """Turn a list of records into right-padded tensors for causal-LM training.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each (B, T) with T the longest
    sequence of the batch; labels are IGNORE_INDEX on prompt and padding tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int = 128):
        self.tokenizer = tokenizer
        self.max_seq_len = whole_number(max_seq_len, "max_seq_len")

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        if not records:
            raise ValueError("Collator: no records to collate")
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
