"""The task data: validation errors name file, line and field; collation masks; reproducible."""

from __future__ import annotations

import json
import sys

import pytest

from helpers.data import IGNORE_INDEX, Collator, load_jsonl, load_task
from helpers.paths import DATA_DIR, TASK_DIR
from helpers.task import FIELDS, parse_answer, score

GOOD = {"prompt": "Tag this review.\nReview: Late parcel.", "completion": '{"category": "x"}'}


def write_lines(tmp_path, lines):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"prompt": "hi"}), "missing field 'completion'"),
        (json.dumps({"prompt": 3, "completion": "x"}), "field 'prompt' must be a string"),
        (json.dumps({"prompt": "hi", "completion": "   "}), "field 'completion' is empty"),
        (json.dumps(["prompt", "completion"]), "expected a JSON object"),
    ],
)
def test_bad_line_names_file_line_and_problem(tmp_path, bad_line, expected):
    path = write_lines(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), bad_line])
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and expected in message


def test_missing_and_empty_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no records"):
        load_jsonl(write_lines(tmp_path, [""]))


def test_blank_lines_are_skipped_and_extra_fields_kept(tmp_path):
    ds = load_jsonl(write_lines(tmp_path, [json.dumps({**GOOD, "id": 7}), "", json.dumps(GOOD)]))
    assert len(ds) == 2 and ds[0]["id"] == 7


def test_unknown_split_lists_valid_ones():
    with pytest.raises(ValueError, match="'train', 'valid' or 'test'"):
        load_task("training")


def test_shipped_splits_are_valid_and_disjoint():
    splits = {name: load_task(name) for name in ("train", "valid", "test")}
    assert [len(s) for s in splits.values()] == [2400, 240, 240]
    train = set(splits["train"]["prompt"])
    assert not train & set(splits["test"]["prompt"]) and not train & set(splits["valid"]["prompt"])
    for record in splits["test"]:
        labels = json.loads(record["completion"])
        assert set(labels) == set(FIELDS)


def test_data_script_reproduces_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DATA_DIR))
    sys.modules.pop("make_task_data", None)
    import make_task_data

    make_task_data.main(tmp_path)
    for name in ("train", "valid", "test", "mc_test"):
        shipped = (TASK_DIR / f"{name}.jsonl").read_bytes()
        assert (tmp_path / "task" / f"{name}.jsonl").read_bytes() == shipped, name
    for name in ("pretrain.txt", "heldout.txt", "chat.jsonl"):
        shipped = (DATA_DIR / "corpus" / name).read_bytes()
        assert (tmp_path / "corpus" / name).read_bytes() == shipped, name


def test_collator_masks_prompt_and_padding(tiny_tokenizer):
    records = [load_task("train")[i] for i in range(3)]
    records[1] = {**records[1], "prompt": "Short."}
    batch = Collator(tiny_tokenizer, max_seq_len=128)(records)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for row in range(3):
        completion = tiny_tokenizer(records[row]["completion"], add_special_tokens=False)
        target = completion["input_ids"] + [tiny_tokenizer.eos_token_id]
        kept = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert kept == target  # exactly the completion and its eos are learned
        assert (labels[row][mask[row] == 0] == IGNORE_INDEX).all()  # padding never is
        assert (ids[row][mask[row] == 0] == tiny_tokenizer.pad_token_id).all()


def test_collator_keeps_the_answer_when_truncating(tiny_tokenizer):
    record = {"prompt": "word " * 300, "completion": '{"category": "billing"}'}
    batch = Collator(tiny_tokenizer, max_seq_len=64)([record])
    assert batch["input_ids"].shape[1] == 64
    kept = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert tiny_tokenizer.decode(kept[:-1]) == record["completion"]


def test_score_and_parse():
    gold = '{"category": "billing", "sentiment": "negative", "urgency": "high"}'
    assert score(gold, gold)["exact"]
    wrong = score('{"category": "billing", "sentiment": "neutral", "urgency": "high"}', gold)
    assert wrong["valid"] and not wrong["exact"] and wrong["category"] and not wrong["sentiment"]
    assert not score("billing, negative", gold)["valid"]
    assert parse_answer('sure: {"a": "b"} done') == {"a": "b"}
    assert parse_answer("[1, 2]") is None and parse_answer("{broken") is None
