"""The benchmark call (helpers.harness.benchmark) says plainly when the hub is out of reach,
and runs nothing then; where the hub answers, it scores a real MMLU subset."""

from __future__ import annotations

import pytest

from helpers.harness import benchmark


@pytest.fixture(scope="module")
def tiny(tiny_profile):
    from helpers.models import load_model

    return load_model(tiny_profile, load_in_4bit=False)


def _online(monkeypatch):
    """Switch the offline flags off for one test (the hub itself stays unreachable)."""
    from huggingface_hub import constants

    for name in benchmark.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_mode_is_reported_not_raised(tiny, monkeypatch):
    _online(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the only switch on
    model, tokenizer = tiny
    result = benchmark.run_benchmark(model, tokenizer, limit=2)
    assert result["status"] == "not reachable" and result["tasks"] == {}
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in result["reason"]


def test_an_unreachable_hub_is_reported_not_raised(tiny, monkeypatch):
    _online(monkeypatch)
    model, tokenizer = tiny
    # port 9 (discard) on this machine: nothing listens, the connection is refused at once
    result = benchmark.run_benchmark(model, tokenizer, limit=2, endpoint="http://127.0.0.1:9")
    assert result["status"] == "not reachable"
    assert result["reason"].startswith("the hub did not answer for cais/mmlu")


def test_hub_status_says_yes_only_when_the_hub_answers(monkeypatch):
    _online(monkeypatch)

    class Answering:
        def __init__(self, endpoint=None):
            pass

        def dataset_info(self, repo_id, timeout=None):
            return {"id": repo_id}

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", Answering)
    assert benchmark.hub_status() == (True, "")


def test_real_mmlu_subset_where_the_hub_answers(tiny):
    reachable, reason = benchmark.hub_status(timeout=3.0)
    if not reachable:
        pytest.skip(f"needs the hub: {reason}")
    model, tokenizer = tiny
    result = benchmark.run_benchmark(model, tokenizer, ("mmlu_marketing",), limit=4)
    assert result["status"] == "ok"
    assert result["tasks"]["mmlu_marketing"]["n"] == 4
    assert 0.0 <= result["tasks"]["mmlu_marketing"]["acc"] <= 1.0
