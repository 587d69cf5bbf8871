"""A window with no target tokens: both accumulation twins and the course's training loop skip
it with the same warning and take no optimizer step; the gradient functions refuse it.

Before, the naive loop divided by zero and the library loop (transformers' loss) reported NaN.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import train as course_train
from helpers.accumulation import library, naive

VOCAB = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(vocab: int = VOCAB) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def _batch(with_targets: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, VOCAB, (2, 6))
    labels = ids.clone() if with_targets else torch.full_like(ids, -100)
    labels[:, :2] = -100  # a prompt part
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_gradient_functions_refuse_a_window_without_targets(twin):
    model = _model()
    empty, full = _batch(False), _batch(True)
    with pytest.raises(ValueError, match="the window has no target tokens"):
        twin.window_gradients(model, [empty, empty])
    with pytest.raises(ValueError, match="the window has no target tokens"):
        twin.full_batch_gradients(model, empty)
    with pytest.raises(ValueError, match="micro-batch 1 has no target tokens"):
        twin.mean_of_means_gradients(model, [full, empty])
    assert twin.window_gradients(model, [full, empty])  # the window as a whole has targets


@pytest.mark.parametrize("mean_of_means", [False, True])
def test_both_loops_skip_the_same_windows_without_a_step(mean_of_means):
    full = [[_batch(True), _batch(True)] for _ in range(2)]
    # an empty window; with mean_of_means also a window with one empty micro-batch
    bad = [[_batch(False), _batch(False)]]
    if mean_of_means:
        bad.append([_batch(True), _batch(False)])
    windows = [full[0], *bad, full[1]]
    base = _model()
    results = {}
    for twin in (naive, library):
        reference = copy.deepcopy(base)
        expected = twin.train(reference, full, lr=1e-2, mean_of_means=mean_of_means)
        model = copy.deepcopy(base)
        with pytest.warns(UserWarning, match=r"window 1 skipped, no optimizer step") as record:
            losses = twin.train(model, windows, lr=1e-2, mean_of_means=mean_of_means)
        assert len(record) == len(bad)
        assert losses == expected  # the skipped windows changed nothing, not even Adam's state
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(p, q)
        results[twin.__name__] = (losses, [str(w.message) for w in record])
    (losses_n, messages_n), (losses_l, messages_l) = results.values()
    assert messages_n == messages_l  # identical warnings
    torch.testing.assert_close(losses_n, losses_l, rtol=1e-5, atol=0)


def test_course_training_loop_skips_a_window_without_targets(tiny_tokenizer):
    """max_seq_len=1 keeps one token per record: nothing is predicted, so no step is taken."""
    model = _model(len(tiny_tokenizer))
    before = copy.deepcopy(model.state_dict())
    records = [{"prompt": "Review: fine.", "completion": '{"a": "b"}'}] * 4
    with pytest.warns(UserWarning, match="window 0 skipped, no optimizer step") as record:
        losses = course_train.train(
            model, tiny_tokenizer, records, max_steps=2, micro_batch_size=2, lr=1e-2,
            max_seq_len=1, progress=False,
        )  # fmt: skip
    assert losses == [] and len(record) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
