"""The prompting baseline: shot selection, the few-shot chat text, and a scorer that can fail."""

from __future__ import annotations

import re

import pytest

from helpers import prompting
from helpers.data import load_task


@pytest.fixture(scope="module")
def splits():
    return load_task("train"), load_task("test")


def test_pick_shots_takes_one_category_each_first(splits):
    train, _ = splits
    shots = prompting.pick_shots(train, 5)
    categories = {s["completion"].split('"category": "')[1].split('"')[0] for s in shots}
    assert len(shots) == 5 and len(categories) == 5
    assert len(prompting.pick_shots(train, 7)) == 7
    assert prompting.pick_shots(train, 0) == []


@pytest.mark.parametrize("k", [-1, 1.5, 10**6])
def test_pick_shots_refuses_bad_counts(splits, k):
    with pytest.raises(ValueError, match="shots"):
        prompting.pick_shots(splits[0], k)


def test_few_shot_prompt_replays_the_shots_then_asks(splits, tiny_tokenizer):
    train, test = splits
    shots = prompting.pick_shots(train, 2)
    text = prompting.few_shot_prompt(tiny_tokenizer, test[0]["prompt"], shots)
    for shot in shots:
        assert shot["prompt"] in text and shot["completion"] in text
    assert text.index(shots[1]["completion"]) < text.index(test[0]["prompt"])
    assert text.endswith("<|assistant|>\n")


def test_scores_right_and_wrong_answers(splits, tiny_tokenizer, monkeypatch):
    _, test = splits
    examples = [test[i] for i in range(4)]
    gold = [ex["completion"] for ex in examples]

    class Stub:
        training = False
        config = None

        def eval(self):
            return self

        def train(self, mode=True):
            return self

    monkeypatch.setattr(prompting, "_greedy", lambda *args: gold)
    right = prompting.prompting_exact_match(Stub(), tiny_tokenizer, examples)
    assert right["exact_match"] == 1.0 and right["valid_rate"] == 1.0 and right["n"] == 4
    swap = {'"urgency": "high"': '"urgency": "low"', '"urgency": "low"': '"urgency": "high"'}
    wrong = [re.sub('"urgency": "(high|low)"', lambda m: swap[m.group(0)], g) for g in gold]
    monkeypatch.setattr(prompting, "_greedy", lambda *args: wrong)
    result = prompting.prompting_exact_match(Stub(), tiny_tokenizer, examples)
    assert result["exact_match"] < 1.0 and result["category_accuracy"] == 1.0


def test_few_shot_needs_a_pool_and_a_context_that_fits(splits, tiny_profile, tiny_tokenizer):
    from helpers.models import load_model

    train, test = splits
    model, _ = load_model(tiny_profile)
    with pytest.raises(ValueError, match="shot_pool"):
        prompting.prompting_exact_match(model, tiny_tokenizer, [test[0]], shots=2)
    with pytest.raises(ValueError, match="positions"):
        prompting.prompting_exact_match(model, tiny_tokenizer, [test[0]], shots=5, shot_pool=train)
    result = prompting.prompting_exact_match(
        model,
        tiny_tokenizer,
        [test[0], test[1]],
        shots=1,
        shot_pool=train,
        max_new_tokens=8,
        progress=False,
    )
    assert result["n"] == 2 and result["shots"] == 1 and len(result["predictions"]) == 2
