"""Chapter 08 runs its whole path on a second dataset, a different task in the chat messages
format (data/orders), with one parameter: the path does not depend on the course's task.
(make test's nbval run covers the default, the course task.) The run must also show that the
adapter learned the task: every field above its majority rate and exact match above the base
model, after ORDERS_STEPS steps (chosen so that the run stays within a CI budget)."""

from __future__ import annotations

import nbformat

from helpers.course import execute
from helpers.data import load_jsonl
from helpers.paths import CHAPTERS_DIR, DATA_DIR
from helpers.report import load_results
from helpers.sft import byod

ORDERS_STEPS = 150  # data/orders/DATA_CARD.md: every field passes its majority rate by then
MARGIN = 0.1  # accuracy above the majority rate that counts as learned (50 items: 5 answers)


def majority_rates(train_file, eval_file, n_eval: int) -> dict[str, float]:
    """Each field's accuracy when always answering its most common training value."""
    references = [byod.split_record(r)[1] for r in load_jsonl(eval_file).select(range(n_eval))]
    return byod.score(byod.majority_answers(load_jsonl(train_file), n_eval), references)


def test_chapter_08_runs_on_the_orders_messages_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    executed = tmp_path / "08_orders.ipynb"
    train_file = DATA_DIR / "orders" / "train.jsonl"
    execute(
        CHAPTERS_DIR / "08_your_data.ipynb",
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
    numbers = load_results()["08_your_data"]
    assert numbers["sft_loss_max_abs_diff"] < 1e-5
    assert numbers["packed_loss_rel_diff"] < 1e-5
    assert 0.5 < numbers["completion_only_masked_fraction"] < 1
    assert numbers["byod_exact_match_base"] <= numbers["byod_exact_match_majority"] + 0.1
    majority = majority_rates(train_file, train_file.with_name("test.jsonl"), 50)
    for field in ("action", "product", "quantity"):
        adapter = numbers[f"byod_{field}_accuracy_adapter"]
        assert adapter >= majority[f"{field}_accuracy"] + MARGIN, (field, adapter, majority)
    assert numbers["byod_exact_match_adapter"] >= numbers["byod_exact_match_base"] + MARGIN
    adapter = tmp_path / "build" / "outputs" / "08_your_data" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (tmp_path / "build" / "outputs" / "08_your_data" / "model-Q8_0.gguf").is_file()
