"""Checkers for chapter 05 (evaluation). Each raises AssertionError with a hint when wrong."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import torch

from helpers.evaluation import library, paired_difference


def check_token_perplexity(fn: Callable) -> None:
    """Perplexity of a set = exp(total NLL / total tokens), not a mean of perplexities."""
    nll_sums = np.array([2.0, 30.0, 9.0])
    n_tokens = np.array([1, 20, 10])
    expected = float(np.exp(nll_sums.sum() / n_tokens.sum()))
    got = fn(nll_sums, n_tokens)
    per_example = float(np.mean(np.exp(nll_sums / n_tokens)))
    assert not np.isclose(got, per_example), (
        "that is the mean of per-example perplexities: short examples weigh as much as long "
        "ones. Sum the NLLs and the token counts first, then divide and exponentiate."
    )
    assert np.isclose(got, expected, rtol=1e-6), (
        f"expected exp(sum(nll) / sum(tokens)) = {expected:.4f}, got {got}"
    )


@cache
def _tiny_model_and_prompts():
    """The shipped tiny model and three tokenized task prompts (loaded once)."""
    from helpers.data import load_task
    from helpers.models import load_model
    from helpers.profiles import get_profile
    from helpers.task import format_prompt

    model, tokenizer = load_model(get_profile("tiny"))
    model = model.to("cpu")
    prompts = [format_prompt(tokenizer, p) for p in load_task("test")["prompt"][:3]]
    ids = [
        tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"] for p in prompts
    ]
    return model, tokenizer, ids


def check_greedy_no_cache(fn: Callable) -> None:
    """The learner's uncached loop must give model.generate's tokens on the tiny model."""
    model, tokenizer, prompts = _tiny_model_and_prompts()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for max_new in (24, 5):
        for input_ids in prompts:
            expected = library.greedy_generate(
                model, input_ids, torch.ones_like(input_ids), max_new, eos, pad
            )
            with torch.no_grad():
                got = torch.as_tensor(fn(model, input_ids, max_new, eos)).reshape(1, -1)
            assert got.shape[1] <= max_new, f"more than max_new_tokens={max_new} tokens returned"
            assert torch.equal(got.cpu(), expected.cpu()), (
                f"tokens differ from model.generate: expected {expected.tolist()}, got "
                f"{got.tolist()}. Return only the NEW tokens, take argmax of the LAST position, "
                "and stop right after the eos token (keep it)."
            )


def check_paired_bootstrap(fn: Callable) -> None:
    """A paired interval: the same resampled examples for both models."""
    rng = np.random.default_rng(5)
    n = 200
    a = (rng.random(n) < 0.6).astype(float)
    flip = rng.random(n) < 0.1  # b agrees with a on 90% of the examples: strongly paired
    b = np.where(flip, 1 - a, a)
    seed = 3
    expected = library.bootstrap_ci(np.stack([a, b], 1), paired_difference, 1000, seed=seed)
    got = tuple(float(x) for x in fn(a, b, n_resamples=1000, seed=seed))
    assert len(got) == 3, "return (estimate, low, high)"
    assert np.isclose(got[0], a.mean() - b.mean()), "the estimate is mean(a) - mean(b)"
    width, expected_width = got[2] - got[1], expected[2] - expected[1]
    assert width < 1.5 * expected_width, (
        f"interval width {width:.3f}, a paired one is about {expected_width:.3f}: resample the "
        "same example indices for a and b (pairs stay together)."
    )
    # A different random stream moves the ends by Monte Carlo noise (~0.01 at 1000 resamples).
    assert np.allclose(got, expected, atol=0.02), f"expected about {expected}, got {got}"
