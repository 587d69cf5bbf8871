"""Parity of the accumulation twins: helpers.accumulation.naive (plain torch) against
helpers.accumulation.library (accelerate + transformers' ``num_items_in_batch``).

Windows are drawn fresh (no fixed seed): k micro-batches of right-padded sequences of random
lengths, with a random prompt part masked out of the labels, so that micro-batches hold
different numbers of target tokens. The reference is one batch of all k, padded to the
longest. Tolerance 1e-5 (relative, fp32): the micro-batches and the joined batch are padded to
different lengths, so attention runs on differently shaped tensors and sums round differently;
the issue asks for 1e-5, and we see about 1e-7.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.accumulation import library, naive

VOCAB = 128


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine, two threads mostly wait on each other
    (a 40x slowdown measured under load). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def _micro_batch(lengths: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) batch; labels -100 on a random prompt part and on padding."""
    T = max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), T))
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        start = int(torch.randint(1, n, ()))  # tokens before `start` are the prompt
        mask[row, :n] = 1
        labels[row, start:n] = ids[row, start:n]
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _window(k: int = 3, micro_batch_size: int = 2):
    """k micro-batches of random lengths, and the same records as one batch."""
    micro = [_micro_batch(torch.randint(4, 30, (micro_batch_size,)).tolist()) for _ in range(k)]
    T = max(b["input_ids"].shape[1] for b in micro)

    def pad(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, T - t.shape[1]), value=-100 if name == "labels" else 0)

    full = {name: torch.cat([pad(name, b[name]) for b in micro]) for name in micro[0]}
    return micro, full


def _rel(grads: dict, ref: dict) -> float:
    assert grads.keys() == ref.keys()
    diff = sum((grads[n] - ref[n]).pow(2).sum() for n in ref).sqrt()
    return (diff / sum(ref[n].pow(2).sum() for n in ref).sqrt()).item()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_window_equals_full_batch(model, k):
    micro, full = _window(k)
    ref = naive.full_batch_gradients(model, full)
    assert _rel(library.full_batch_gradients(model, full), ref) < 1e-6  # same loss, same batch
    assert _rel(naive.window_gradients(model, micro), ref) < 1e-5
    assert _rel(library.window_gradients(model, micro), ref) < 1e-5


def test_mean_of_means_differs_and_twins_agree(model):
    micro, full = _window(3)
    ref = naive.full_batch_gradients(model, full)
    ours, theirs = (
        naive.mean_of_means_gradients(model, micro),
        library.mean_of_means_gradients(model, micro),
    )
    # Both twins compute the same (wrong) thing; only rounding separates them.
    assert _rel(ours, theirs) < 1e-6
    # Random lengths make unequal token counts, so the bias is far above rounding noise.
    assert _rel(ours, ref) > 1e-3


def test_equal_counts_make_mean_of_means_correct(model):
    # With the same number of targets in every micro-batch, the mean of means is exact:
    # the bug is about unequal counts, not about accumulation itself.
    micro = [_micro_batch([10, 10]) for _ in range(3)]
    for b in micro:
        b["labels"][:, 1:6] = -100
        b["labels"][:, 6:] = b["input_ids"][:, 6:]
    assert len({naive.count_targets([b]) for b in micro}) == 1
    ref = naive.window_gradients(model, micro)
    assert _rel(naive.mean_of_means_gradients(model, micro), ref) < 1e-6


def test_count_targets_skips_first_label():
    batch = {"labels": torch.tensor([[5, 6, -100], [-100, 7, 8]])}
    assert naive.count_targets([batch]) == 3  # labels[:, 1:] has 6, 7, 8


@pytest.mark.parametrize("mean_of_means", [False, True])
def test_training_twins_agree(model, mean_of_means):
    windows = [_window(2)[0] for _ in range(3)]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    losses_a = naive.train(a, windows, lr=1e-3, mean_of_means=mean_of_means)
    losses_b = library.train(b, windows, lr=1e-3, mean_of_means=mean_of_means)
    # AdamW divides by sqrt(v): rounding-level gradient differences grow a little per step.
    torch.testing.assert_close(torch.tensor(losses_a), torch.tensor(losses_b), rtol=1e-5, atol=0)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
