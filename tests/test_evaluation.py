"""Parity of the evaluation twins (helpers.evaluation.naive vs .library) on tiny random Llamas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.evaluation import library, mean, naive, paired_difference, token_perplexity

VOCAB, EOS, PAD = 128, 1, 0


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("seed, stride", [(0, None), (1, 12), (2, 32)])
def test_perplexity_parity(seed, stride):
    model = tiny_llama(seed)
    n = int(torch.randint(80, 160, ()).item())
    ids = torch.randint(2, VOCAB, (n,))
    mine, theirs = (
        naive.perplexity(model, ids, 32, stride),
        library.perplexity(model, ids, 32, stride),
    )
    # Every token but the first is scored once; without overlap, each window's first is lost.
    expected = n - 1 if stride and stride < 32 else n - 1 - (n - 1) // 32
    assert mine["n_tokens"] == theirs["n_tokens"] == expected
    # Same float32 token NLLs, summed in a different order (gather vs cross_entropy): float32
    # rounding of ~100 terms, far inside the bar of 1e-4 (perplexity ~128).
    assert mine["ppl"] == pytest.approx(theirs["ppl"], rel=1e-6)


def test_perplexity_one_window_is_plain_cross_entropy():
    model = tiny_llama(2)
    ids = torch.randint(2, VOCAB, (100,))
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]  # (T, V)
    reference = torch.exp(F.cross_entropy(logits[:-1], ids[1:])).item()
    assert naive.perplexity(model, ids, 128)["ppl"] == pytest.approx(reference, rel=1e-5)


def test_sequence_nll_parity_with_padding():
    model = tiny_llama(3)
    ids = torch.randint(2, VOCAB, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding on row 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # a "prompt" of 5 tokens
    a_nll, a_n = naive.sequence_nll(model, ids, labels, mask)
    b_nll, b_n = library.sequence_nll(model, ids, labels, mask)
    assert torch.equal(a_n, b_n) and a_n.tolist() == [15, 10, 15]
    # float32 sums of ~14 terms in a different order: a few ulps of numbers near 70.
    torch.testing.assert_close(a_nll, b_nll, rtol=1e-5, atol=1e-5)


def left_padded_batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(2, VOCAB, (n,))
        mask[row, width - n :] = 1
    return ids, mask


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_equals_generate_token_for_token(seed):
    model = tiny_llama(seed)
    ids, mask = left_padded_batch([7, 12, 3, 12])
    free = naive.greedy_generate(model, ids, mask, 16, EOS, PAD)
    # Make a token that row 0 emits at step 3 the eos, so rows finish at different steps.
    eos = int(free[0, 3])
    mine = naive.greedy_generate(model, ids, mask, 16, eos, PAD)
    theirs = library.greedy_generate(model, ids, mask, 16, eos, PAD)
    assert torch.equal(mine, theirs)
    first = int((mine[0] == eos).nonzero()[0])  # row 0 finishes at step 3 or earlier
    assert first <= 3 and (mine[0, first + 1 :] == PAD).all()


def test_greedy_parity_on_a_peft_model():
    model = tiny_llama(4)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    ids, mask = left_padded_batch([5, 9])
    mine = naive.greedy_generate(peft_model, ids, mask, 10, EOS, PAD)
    assert torch.equal(mine, library.greedy_generate(peft_model, ids, mask, 10, EOS, PAD))


@pytest.mark.parametrize("seed", [0, 1])
def test_score_choices_parity(seed):
    model = tiny_llama(seed)
    context = torch.randint(2, VOCAB, (15,)).tolist()
    choices = [torch.randint(2, VOCAB, (n,)).tolist() for n in (1, 3, 2, 4)]
    a_sum, a_n = naive.score_choices(model, context, choices)
    b_sum, b_n = library.score_choices(model, context, choices)
    assert a_n.tolist() == b_n.tolist() == [1, 3, 2, 4]
    # One forward per choice vs one right-padded batch: padding changes the matmul shapes,
    # so float32 results differ by rounding only.
    torch.testing.assert_close(a_sum, b_sum, rtol=1e-5, atol=1e-4)
    assert int(a_sum.argmax()) == int(b_sum.argmax())
    assert int((a_sum / a_n).argmax()) == int((b_sum / b_n).argmax())


def test_task_scores_parity():
    gold = json.dumps({"category": "billing", "sentiment": "negative", "urgency": "high"})
    preds = [
        gold,
        'Sure: {"category": "billing", "sentiment": "negative", "urgency": "low"} done',
        '{"category": "billing", "sentiment": "negative"}',
        '{"category": 3, "sentiment": "negative", "urgency": "high"}',
        "no json here",
        '{"category": "billing", "sentiment": ',
        "[1, 2]",
    ]
    mine = naive.task_scores(preds, [gold] * len(preds))
    theirs = library.task_scores(preds, [gold] * len(preds))
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key].tolist() == theirs[key].tolist(), key
    assert mine["exact"].tolist() == [True] + [False] * 6
    assert mine["valid"].tolist() == [True, True] + [False] * 5


@pytest.mark.parametrize(
    "statistic, columns", [(mean, None), (paired_difference, 2), (token_perplexity, 2)]
)
def test_bootstrap_parity(statistic, columns):
    rng = np.random.default_rng()
    n = int(rng.integers(20, 80))
    values = rng.random(n) < 0.6 if columns is None else rng.random((n, columns)) + 0.1
    seed = int(rng.integers(0, 1000))
    mine = naive.bootstrap_ci(values, statistic, n_resamples=300, seed=seed)
    theirs = library.bootstrap_ci(values, statistic, n_resamples=300, seed=seed)
    # Same seed, same index stream, same statistic: the same numbers up to summation order.
    np.testing.assert_allclose(mine, theirs, rtol=1e-12)
    assert mine[1] <= mine[0] <= mine[2]


def test_bootstrap_width_matches_the_normal_approximation():
    values = np.random.default_rng().random(400) < 0.5
    estimate, low, high = library.bootstrap_ci(values, mean, n_resamples=4000)
    normal = 2 * 1.96 * np.sqrt(estimate * (1 - estimate) / len(values))
    assert (high - low) == pytest.approx(normal, rel=0.15)


def test_bad_input_is_named():
    model = tiny_llama(0)
    ids, mask = left_padded_batch([4, 6])
    with pytest.raises(ValueError, match="left padding"):
        naive.greedy_generate(model, ids, mask.flip(1), 4, EOS, PAD)
    with pytest.raises(ValueError, match="stride"):
        naive.perplexity(model, torch.arange(2, 40), 16, stride=32)
    with pytest.raises(ValueError, match="references"):
        library.task_scores(["{}"], [])


def _full_logits_nll(model, ids, labels):
    """The unchunked reference: float32 log_softmax over every position's logits at once."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * (targets != -100)).sum(dim=-1)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_chunked_nll_equals_unchunked(twin):
    model = tiny_llama(4)
    ids = torch.randint(2, VOCAB, (2, 90))
    labels = ids.clone()
    labels[:, :7] = -100
    reference = _full_logits_nll(model, ids, labels)
    for chunk_tokens in (1, 5, 64, 10_000):
        nll, count = twin.sequence_nll(model, ids, labels, chunk_tokens=chunk_tokens)
        assert count.tolist() == [83, 83]  # labels 7..89
        torch.testing.assert_close(nll, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_long_sequence_never_holds_all_logits(twin):
    """The output head only ever sees chunk_tokens positions: no (T, V) logits exist at once,
    also through peft's wrapper (its get_decoder reaches the base model)."""
    model = get_peft_model(tiny_llama(5), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    head_rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_rows.append(out.reshape(-1, VOCAB).shape[0])
    )
    ids = torch.randint(2, VOCAB, (1, 250))
    try:
        whole, _ = twin.sequence_nll(model, ids, ids)  # the default: CHUNK_TOKENS = 256 > 249
        n_whole = len(head_rows)
        nll, count = twin.sequence_nll(model, ids, ids, chunk_tokens=16)
    finally:
        hook.remove()
    assert count.tolist() == [249] and n_whole == 1
    assert head_rows[n_whole:] == [16] * 15 + [9]  # 249 positions in slices of 16
    torch.testing.assert_close(nll, whole, rtol=1e-5, atol=1e-5)
