"""Multiple-choice normalisations against lm-evaluation-harness' formulas, and the evaluation
twins' answers to bad input (each twin, the same error).

The harness (``lm_eval/api/task.py``, ``process_results``, ``multiple_choice``) computes
``completion_len = [len(c) for c in choices]`` and ``byte_length = [len(c.encode("utf-8"))]``
and picks ``np.argmax(lls)`` (acc), ``np.argmax(lls / completion_len)`` (acc_norm),
``np.argmax(lls / byte_length)`` (acc_bytes). Those three lines are written out below as the
reference, on the course's own multiple-choice items.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.evaluation import library, mean, naive
from helpers.paths import DATA_DIR

VOCAB, EOS, PAD = 64, 1, 0


def _harness(lls: np.ndarray, choices: list[str]) -> dict[str, int]:
    completion_len = np.array([float(len(i)) for i in choices])
    byte_length = np.array([float(len(i.encode("utf-8"))) for i in choices])
    return {
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / completion_len)),
        "acc_bytes": int(np.argmax(lls / byte_length)),
    }


def _items() -> list[dict]:
    lines = (DATA_DIR / "task" / "mc_test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_mc_predictions_follow_the_harness_on_the_course_items(twin):
    items = _items()
    assert len(items) >= 200
    differ_from_sum = 0
    for item in items:
        choices = item["choices"]
        # log-likelihoods at the scale of real ones (a few nats per character): per-character
        # normalisation then changes the pick on a share of the questions
        lls = -torch.rand(len(choices)).double() * 4 * torch.tensor([len(c) for c in choices])
        picks = twin.mc_predictions(lls, choices)
        assert picks == _harness(lls.numpy(), choices)
        differ_from_sum += picks["acc_norm"] != picks["acc"]
    assert differ_from_sum > 0  # the comparison can tell the normalisations apart


def test_each_normalisation_is_the_one_named():
    """Hand-made cases where the three (and per-token) disagree, so a mix-up fails."""
    choices = ["né", "nee", "n"]  # 2 chars / 3 bytes, 3 / 3, 1 / 1
    lls = torch.tensor([-2.1, -2.4, -1.5])
    # acc: -1.5 (idx 2); per char: -1.05, -0.8, -1.5 -> idx 1; per byte: -0.7, -0.8, -1.5 -> 0
    expected = {"acc": 2, "acc_norm": 1, "acc_bytes": 0}
    n_tokens = torch.tensor([1, 3, 1])  # per token: -2.1, -0.8, -1.5 -> idx 1
    for twin in (naive, library):
        assert twin.mc_predictions(lls, choices) == expected
        assert twin.mc_predictions(lls, choices, n_tokens)["acc_per_token"] == 1
        ties = twin.mc_predictions(torch.tensor([-1.0, -1.0]), ["a", "b"])
        assert ties == {"acc": 0, "acc_norm": 0, "acc_bytes": 0}  # first maximum, as np.argmax
    # one-token choices: per-token normalisation is the plain sum
    picks = naive.mc_predictions(lls, choices, torch.ones(3, dtype=torch.long))
    assert picks["acc_per_token"] == picks["acc"]


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_multiple_choice_bad_input(twin, model):
    with pytest.raises(ValueError, match="context_ids is empty"):
        twin.score_choices(model, [], [[3, 4], [5]])
    with pytest.raises(ValueError, match="choice_ids is empty"):
        twin.score_choices(model, [2, 3], [])
    with pytest.raises(ValueError, match="choice 1 has no tokens"):
        twin.score_choices(model, [2, 3], [[4], []])
    lp, n = twin.score_choices(model, [2, 3], [[4], [5, 6]])  # good input still works
    assert lp.shape == n.shape == (2,) and (lp < 0).all()
    with pytest.raises(ValueError, match="choices is empty"):
        twin.mc_predictions(torch.tensor([]), [])
    with pytest.raises(ValueError, match=r"choice 1 \(''\) is not a non-empty string"):
        twin.mc_predictions(torch.tensor([-1.0, -2.0]), ["a", ""])
    with pytest.raises(ValueError, match="2 scores for 3 choices"):
        twin.mc_predictions(torch.tensor([-1.0, -2.0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"logprob_sum\[0\] is nan"):
        twin.mc_predictions(torch.tensor([float("nan"), -2.0]), ["a", "b"])


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_perplexity_and_generation_bad_input(twin, model):
    for stream in (torch.tensor([], dtype=torch.long), torch.tensor([5])):
        with pytest.raises(ValueError, match="perplexity needs at least 2"):
            twin.perplexity(model, stream, 16)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        twin.perplexity(model, torch.arange(2, 12), 1)
    with pytest.raises(TypeError, match="1-D tensor"):
        twin.perplexity(model, torch.arange(2, 12).view(2, 5), 16)
    two = twin.perplexity(model, torch.tensor([5, 7]), 16)
    assert two["n_tokens"] == 1 and np.isfinite(two["ppl"])
    ids = torch.randint(2, VOCAB, (2, 5))
    mask = torch.ones_like(ids)
    empty = twin.greedy_generate(model, ids, mask, 0, EOS, PAD)
    assert empty.shape == (2, 0) and empty.dtype == ids.dtype
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        twin.greedy_generate(model, ids, mask, -1, EOS, PAD)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        twin.greedy_generate(model, ids, mask, 2.0, EOS, PAD)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_bootstrap_bad_input(twin):
    values = np.random.default_rng().random(30)
    for confidence in (0.0, 1.0, -0.5, 95):
        with pytest.raises(ValueError, match="confidence must be strictly between 0 and 1"):
            twin.bootstrap_ci(values, mean, 1000, confidence)
    for n_resamples in (1, 39):
        with pytest.raises(ValueError, match="n_resamples >= 40"):
            twin.bootstrap_ci(values, mean, n_resamples, 0.95)
    with pytest.raises(ValueError, match="n_resamples >= 200"):
        twin.bootstrap_ci(values, mean, 100, 0.99)
    bad = values.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="NaN or inf entries \\(first in row 7\\)"):
        twin.bootstrap_ci(bad, mean)
    with pytest.raises(ValueError, match="n >= 1"):
        twin.bootstrap_ci(np.array([]), mean)
    estimate, low, high = twin.bootstrap_ci(values, mean, 40, 0.95)  # the smallest allowed
    assert low <= estimate <= high


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_task_scores_name_a_broken_reference(twin):
    good = '{"category": "billing", "sentiment": "negative", "urgency": "high"}'
    with pytest.raises(ValueError, match="reference 1 is not valid JSON"):
        twin.task_scores([good, good], [good, '{"category": '])
    with pytest.raises(ValueError, match="reference 0 must be a JSON object with fields"):
        twin.task_scores([good], ['{"category": "billing"}'])
    assert twin.task_scores([good], [good])["exact"].tolist() == [True]
