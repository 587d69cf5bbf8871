"""The orders dataset (data/orders): the script writes the shipped bytes again, the course's
loader accepts the files as they are, and the labels follow from the messages."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers.data import encode, load_jsonl
from helpers.paths import DATA_DIR

ORDERS_DIR = DATA_DIR / "orders"
FILES = ("train", "valid", "test", "mc_test")


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(DATA_DIR))
    try:
        sys.modules.pop("make_orders_data", None)
        import make_orders_data
    finally:
        sys.path.remove(str(DATA_DIR))
    return make_orders_data


def test_script_reproduces_the_shipped_bytes(script, tmp_path):
    script.main(tmp_path)
    for name in FILES:
        shipped = (ORDERS_DIR / f"{name}.jsonl").read_bytes()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped, name


def test_a_different_seed_gives_different_bytes(script, tmp_path, monkeypatch):
    # the reproduction test could not fail if the seeds did not matter
    monkeypatch.setitem(script.SPLIT_SEEDS, "test", 999)
    script.main(tmp_path)
    assert (tmp_path / "test.jsonl").read_bytes() != (ORDERS_DIR / "test.jsonl").read_bytes()


def test_the_course_loader_reads_messages_and_splits_are_disjoint(script):
    splits = {name: load_jsonl(ORDERS_DIR / f"{name}.jsonl") for name in ("train", "valid", "test")}
    assert {k: len(v) for k, v in splits.items()} == script.SPLIT_SIZES
    users = {k: {m[1]["content"] for m in v["messages"]} for k, v in splits.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["valid"]
    for record in splits["test"]:
        roles = [turn["role"] for turn in record["messages"]]
        assert roles == ["system", "user", "assistant"]
        answer = json.loads(record["messages"][2]["content"])
        assert list(answer) == list(script.FIELDS)
        message = record["messages"][1]["content"]
        assert answer["product"] in message and f"{answer['quantity']} " in message


def test_only_the_answer_is_trained_on(tiny_tokenizer):
    record = load_jsonl(ORDERS_DIR / "train.jsonl")[0]
    encoded = encode(tiny_tokenizer, record, max_seq_len=128)
    assert len(encoded["input_ids"]) <= 128
    targets = [
        t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100
    ]
    assert tiny_tokenizer.decode(targets) == record["messages"][2]["content"] + "<|eos|>"


def test_multiple_choice_answers_match_the_parse(script):
    test = [json.loads(line) for line in (ORDERS_DIR / "test.jsonl").read_text().splitlines()]
    mc = [json.loads(line) for line in (ORDERS_DIR / "mc_test.jsonl").read_text().splitlines()]
    assert len(mc) == script.MC_SIZE and {q["field"] for q in mc} == {"action", "product"}
    for question, record in zip(mc, test, strict=False):
        gold = json.loads(record["messages"][2]["content"])[question["field"]]
        assert question["choices"][question["answer"]] == gold
        assert record["messages"][1]["content"] in question["question"]


def test_the_answer_copies_the_products_distinguishing_token(script, tiny_tokenizer):
    # DATA_CARD.md: a word after the JSON's quote is another token than after a space; products
    # share their first word so that the word that tells them apart is the same token in both
    answer_first, answer_rest = set(), set()
    for product in script.PRODUCTS:
        in_message = tiny_tokenizer.tokenize(f" {product}s")  # "3 desk lamps"
        in_answer = tiny_tokenizer.tokenize(json.dumps({"product": product}))
        value = in_answer[in_answer.index('Ġ"') + 1 : -1]
        assert in_message[1 : len(value)] == value[1:], product
        answer_first.add(value[0])
        answer_rest.add(tuple(value[1:]))
    assert len(answer_first) == 1 and len(answer_rest) == len(script.PRODUCTS)


def test_the_learning_curve_script_scores_as_the_card_says():
    """data/orders_learning_curve.py made DATA_CARD.md's table: its majority row is the card's,
    and it trains and scores a run end to end (one step here; the card's rows take minutes)."""
    spec = importlib.util.spec_from_file_location(
        "orders_learning_curve", DATA_DIR / "orders_learning_curve.py"
    )
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    rows = dict(curve.curve([1]))
    card = (DATA_DIR / "orders" / "DATA_CARD.md").read_text()
    majority = rows["majority baseline"]
    assert (
        "| majority baseline | " + " | ".join(f"{majority[f]:.2f}" for f in curve.FIELDS) + " |"
    ) in card
    assert set(rows) == {"majority baseline", "1"}
    assert all(0 <= rows["1"][f] <= 1 for f in curve.FIELDS)
