"""Chapter 05's solutions pass their checkers, and plausible wrong answers fail them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch05_evaluation as checkers
from solutions import ch05_evaluation as solutions


def test_solutions_pass():
    assert check("token_perplexity", solutions.token_perplexity, checkers.check_token_perplexity)
    assert check("greedy_no_cache", solutions.greedy_no_cache, checkers.check_greedy_no_cache)
    assert check("paired_bootstrap", solutions.paired_bootstrap, checkers.check_paired_bootstrap)


def test_stub_is_not_attempted():
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check("token_perplexity", stub, checkers.check_token_perplexity) is False


def _mean_of_perplexities(nll_sums, n_tokens):
    return float(np.mean(np.exp(np.asarray(nll_sums) / np.asarray(n_tokens))))


def _mean_nll_per_example(nll_sums, n_tokens):
    return float(np.exp(np.mean(np.asarray(nll_sums) / np.asarray(n_tokens))))


@torch.no_grad()
def _drops_eos(model, input_ids, max_new_tokens, eos_token_id):
    new = solutions.greedy_no_cache(model, input_ids, max_new_tokens, eos_token_id)
    return new[:, :-1] if new[0, -1].item() == eos_token_id else new


@torch.no_grad()
def _returns_prompt_too(model, input_ids, max_new_tokens, eos_token_id):
    new = solutions.greedy_no_cache(model, input_ids, max_new_tokens, eos_token_id)
    return torch.cat([input_ids, new], dim=1)


def _unpaired(a, b, n_resamples=1000, seed=0):
    """Resamples a and b independently: the interval ignores that they share examples."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(n_resamples, len(a)))
    ib = rng.integers(0, len(b), size=(n_resamples, len(b)))
    diffs = a[ia].mean(1) - b[ib].mean(1)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(a.mean() - b.mean()), float(low), float(high)


def _reversed_difference(a, b, n_resamples=1000, seed=0):
    return solutions.paired_bootstrap(b, a, n_resamples, seed)


@pytest.mark.parametrize(
    ("name", "wrong", "checker"),
    [
        ("token_perplexity", _mean_of_perplexities, checkers.check_token_perplexity),
        ("token_perplexity", _mean_nll_per_example, checkers.check_token_perplexity),
        ("greedy_no_cache", _drops_eos, checkers.check_greedy_no_cache),
        ("greedy_no_cache", _returns_prompt_too, checkers.check_greedy_no_cache),
        ("paired_bootstrap", _unpaired, checkers.check_paired_bootstrap),
        ("paired_bootstrap", _reversed_difference, checkers.check_paired_bootstrap),
    ],
)
def test_wrong_answers_fail(name, wrong, checker):
    with pytest.raises(ExerciseFailed):
        check(name, wrong, checker)
