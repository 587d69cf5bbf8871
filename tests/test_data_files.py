"""Data files as learners really have them: encodings, compression, TRL's messages format, and
every problem reported with the file and the line."""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.data import IGNORE_INDEX, Collator, encode, load_jsonl

GOOD = {"prompt": "Tag this review.\nReview: Late parcel.", "completion": '{"category": "x"}'}
CHAT = {
    "messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Tag this review.\nReview: Late parcel."},
        {"role": "assistant", "content": '{"category": "x"}'},
    ]
}


def lines_bytes(records, encoding="utf-8") -> bytes:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode(encoding)


def write(tmp_path, data: bytes, name="mine.jsonl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_names(err, path, line=None):
    message = str(err.value)
    assert str(path) in message, message
    if line is not None:
        assert f"line {line}" in message, message


@pytest.mark.parametrize(
    "encode_as",
    [
        lambda b: b,
        lambda b: b"\xef\xbb\xbf" + b,  # UTF-8 with a byte order mark (Windows Notepad)
        lambda b: b.decode().encode("utf-16"),  # UTF-16 with its BOM (PowerShell's default)
        lambda b: b.decode().encode("utf-16-be").join([b"\xfe\xff", b""]),
        gzip.compress,
        lambda b: gzip.compress(b"\xef\xbb\xbf" + b),
    ],
    ids=["utf8", "utf8-bom", "utf16-le", "utf16-be", "gzip", "gzip-utf8-bom"],
)
def test_encodings_and_gzip_are_read(tmp_path, encode_as):
    records = [GOOD, {**GOOD, "prompt": "Café ☕ déjà vu"}]
    ds = load_jsonl(write(tmp_path, encode_as(lines_bytes(records))))
    assert ds.to_list() == records


def test_invalid_utf8_names_file_and_line(tmp_path):
    data = lines_bytes([GOOD, GOOD]) + b'\n{"prompt": "caf\xe9", "completion": "x"}'
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match="not valid UTF-8") as err:
        load_jsonl(path)
    assert_names(err, path, 3)


def test_lone_surrogate_names_file_line_and_field(tmp_path):
    path = write(tmp_path, lines_bytes([GOOD]) + b'\n{"prompt": "a \\ud800 b", "completion": "x"}')
    with pytest.raises(ValueError, match=r"field 'prompt' holds a lone surrogate \\ud800") as err:
        load_jsonl(path)
    assert_names(err, path, 2)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"PK\x03\x04rest-of-a-zip", "a zip archive"),
        (b"BZh91AY&SY", "bzip2"),
        (b"\x1f\x8b\x08\x00broken", "gzip file that is damaged"),
        ('{"prompt": "a"}'.encode("utf-16-le"), "UTF-16 without a byte order mark"),
        (b"PAR1\x00\x00", "Parquet"),
    ],
)
def test_other_files_are_named(tmp_path, data, what):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=what) as err:
        load_jsonl(path)
    assert_names(err, path)


def test_extra_field_changing_type_names_both_lines(tmp_path):
    records = [{**GOOD, "id": 1}, {**GOOD, "id": None}, {**GOOD, "id": "two"}]
    path = write(tmp_path, lines_bytes(records))
    with pytest.raises(ValueError, match="field 'id' is a string, but on line 1 it is a integer"):
        load_jsonl(path)
    nested = [{**GOOD, "tags": ["a"]}, {**GOOD, "tags": [1]}]
    with pytest.raises(ValueError, match="line 2: field 'tags'") as err:
        load_jsonl(write(tmp_path, lines_bytes(nested), "nested.jsonl"))
    assert "nested.jsonl" in str(err.value)


def test_home_is_expanded_and_a_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, lines_bytes([GOOD]))
    assert len(load_jsonl("~/mine.jsonl")) == 1
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_jsonl("~")


def test_messages_records_are_read_and_checked(tmp_path):
    ds = load_jsonl(write(tmp_path, lines_bytes([CHAT, CHAT])))
    assert ds[0]["messages"][2]["role"] == "assistant"
    bad = [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, r"messages\[0\]: role 'bot'"),
        ({"messages": [{"role": "user"}]}, "'role' and 'content'"),
        ({"messages": [{"role": "assistant", "content": 3}]}, "'content' must be a string"),
        (GOOD, "a prompt/completion record, but line 1 is messages"),
    ]
    for number, (record, expected) in enumerate(bad):
        path = write(tmp_path, lines_bytes([CHAT, record]), f"bad{number}.jsonl")
        with pytest.raises(ValueError, match=expected) as err:
            load_jsonl(path)
        assert_names(err, path, 2)


def test_single_turn_messages_encode_like_prompt_completion(tiny_tokenizer):
    chat = {"messages": [{"role": "user", "content": GOOD["prompt"]}, CHAT["messages"][2]]}
    for length in (128, 12, 5):
        assert encode(tiny_tokenizer, chat, length) == encode(tiny_tokenizer, GOOD, length)


def test_messages_learn_only_the_assistant_turns(tiny_tokenizer):
    turns = [
        *CHAT["messages"],
        {"role": "user", "content": "And this one?\nReview: Great."},
        {"role": "assistant", "content": '{"category": "y"}'},
    ]
    batch = Collator(tiny_tokenizer, 256)([{"messages": turns}])
    labels = batch["labels"][0]
    learned = tiny_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
    eos = tiny_tokenizer.eos_token
    assert learned == f'{{"category": "x"}}{eos}{{"category": "y"}}{eos}'
    text = tiny_tokenizer.apply_chat_template(turns, tokenize=False).removesuffix("\n")
    whole = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == whole  # the template's own conversation
