"""Chapter 09 runs its whole path on a second dataset, a different task in the chat messages
format (data/orders), with one parameter: the path does not depend on the course's task.
(make test's nbval run covers the default, the course task.) The run must also show that the
adapter learned the task: every field above its majority rate and exact match above the base
model, after ORDERS_STEPS steps (chosen so that the run stays within a CI budget). The base
model's score must be the untrained model's: the test scores the shipped model itself, with
its own comparison, and the chapter's "base model" row must agree."""

from __future__ import annotations

import json

import nbformat

from helpers.data import load_jsonl
from helpers.models import load_model
from helpers.paths import CHAPTERS_DIR, DATA_DIR
from helpers.profiles import get_profile
from helpers.report import load_results
from helpers.sft import byod
from tools.course import execute

ORDERS_STEPS = 300  # data/orders/DATA_CARD.md: every field passes its majority rate by then
MARGIN = 0.1  # accuracy above the majority rate that counts as learned (50 items: 5 answers)


def majority_rates(train_file, eval_file, n_eval: int) -> dict[str, float]:
    """Each field's accuracy when always answering its most common training value."""
    references = [byod.split_record(r)[1] for r in load_jsonl(eval_file).select(range(n_eval))]
    return byod.score(byod.majority_answers(load_jsonl(train_file), n_eval), references)


def untrained_exact_match(eval_file, n_eval: int) -> float:
    """The shipped model's exact match on the records, each answer compared field by field."""
    records = list(load_jsonl(eval_file).select(range(n_eval)))
    model, tokenizer = load_model(get_profile("tiny"))
    right = 0
    for answer, record in zip(byod.generate(model, tokenizer, records), records, strict=True):
        try:
            right += json.loads(answer) == json.loads(byod.split_record(record)[1])
        except json.JSONDecodeError:
            pass
    return right / n_eval


def test_chapter_09_runs_on_the_orders_messages_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    executed = tmp_path / "09_orders.ipynb"
    train_file = DATA_DIR / "orders" / "train.jsonl"
    execute(
        CHAPTERS_DIR / "09_your_data.ipynb",
        executed,
        {
            "PROFILE": "tiny",
            "TRAIN_FILE": str(train_file),
            "PARITY_STEPS": 4,
            "MAX_STEPS": ORDERS_STEPS,
        },
    )
    text = "".join(
        out.get("text", "")
        for cell in nbformat.read(executed, as_version=4).cells
        for out in cell.get("outputs", [])
    )
    assert "1200 messages records" in text and "test.jsonl: 50 scored" in text
    numbers = load_results()["09_your_data"]
    assert numbers["sft_loss_max_abs_diff"] < 1e-5
    assert numbers["packed_loss_rel_diff"] < 1e-5
    assert 0.5 < numbers["completion_only_masked_fraction"] < 1
    # the "base model" row is the untrained model (adapter off), scored as the test scores it
    assert numbers["byod_exact_match_base"] == untrained_exact_match(
        train_file.with_name("test.jsonl"), 50
    )
    # and the adapter's exact match lies above it with its whole 95% interval
    assert numbers["byod_exact_match_adapter_interval"]["low"] > numbers["byod_exact_match_base"]
    majority = majority_rates(train_file, train_file.with_name("test.jsonl"), 50)
    for field in ("action", "product", "quantity"):
        adapter = numbers[f"byod_{field}_accuracy_adapter"]
        assert adapter >= majority[f"{field}_accuracy"] + MARGIN, (field, adapter, majority)
    assert numbers["byod_exact_match_adapter"] >= numbers["byod_exact_match_base"] + MARGIN
    adapter = tmp_path / "build" / "outputs" / "09_your_data" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())  # what chapter 07 reads
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"]
    assert "-p PROFILE tiny -p ADAPTER_DIR " in text  # the hand-off command is printed
