"""The shared training loop: gradient clipping by global norm and the validation loss."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from helpers.data import Collator, load_task
from helpers.paths import TINY_MODEL_DIR
from helpers.train import token_loss_sum, train, validation_loss


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def records():
    return load_task("train").select(range(16))


def test_validation_loss_is_token_weighted(model, tokenizer, records):
    model.train()
    got = validation_loss(model, tokenizer, records, micro_batch_size=5)
    assert model.training  # mode restored
    batch = Collator(tokenizer, 128)([records[i] for i in range(len(records))])
    with torch.no_grad():
        expected = token_loss_sum(model.eval(), batch).item()
    expected /= int((batch["labels"][:, 1:] != -100).sum())
    assert got == pytest.approx(expected, rel=1e-5)


def test_clipping_caps_the_update_and_logs_the_raw_norm(model, tokenizer, records):
    reference = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    history = {}
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    kwargs = dict(max_steps=1, micro_batch_size=4, lr=1.0, progress=False)
    train(model, tokenizer, records, optimizer=sgd, max_grad_norm=0.3, history=history, **kwargs)
    step = torch.cat(
        [(a - b.detach()).flatten() for a, b in zip(before, model.parameters(), strict=True)]
    )
    raw = {}
    train(
        reference,
        tokenizer,
        records,
        optimizer=torch.optim.SGD(reference.parameters(), lr=0.0),
        history=raw,
        **kwargs,
    )
    assert history["grad_norm"] == pytest.approx(raw["grad_norm"], rel=1e-5)
    assert raw["grad_norm"][0] > 0.3  # so clipping had something to do
    assert step.norm().item() == pytest.approx(0.3, rel=1e-4)  # lr 1: the update is the gradient


def test_validation_history(model, tokenizer, records):
    history = {}
    losses = train(
        model,
        tokenizer,
        records,
        max_steps=5,
        micro_batch_size=4,
        lr=1e-3,
        progress=False,
        eval_dataset=records.select(range(4)),
        eval_every=2,
        history=history,
    )
    assert len(losses) == len(history["grad_norm"]) == 5
    assert history["val_step"] == [2, 4, 5]
    assert len(history["val_loss"]) == 3 and all(v > 0 for v in history["val_loss"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_grad_norm": 0.0},
        {"max_grad_norm": -1.0},
        {"eval_every": 0, "eval_dataset": "set below"},
    ],
)
def test_bad_settings_are_refused(model, tokenizer, records, kwargs):
    if "eval_dataset" in kwargs:
        kwargs = {**kwargs, "eval_dataset": records}
    with pytest.raises(ValueError, match="max_grad_norm|eval_every"):
        train(
            model,
            tokenizer,
            records,
            max_steps=1,
            micro_batch_size=4,
            lr=1e-3,
            progress=False,
            **kwargs,
        )
