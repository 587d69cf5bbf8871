"""Checkers for the exercises of chapter 08 (your data: SFT, packing, tracking).

Each takes the learner's answer and raises AssertionError with a hint when it is wrong.
"""

from __future__ import annotations

import random

import torch

IGNORE_INDEX = -100


def check_completion_labels(fn) -> None:
    """``fn(prompt_ids, completion_ids, eos_id)`` -> ``(input_ids, labels)``, completion only."""
    rng = random.Random(8)
    for _ in range(6):
        prompt = [rng.randint(2, 900) for _ in range(rng.randint(1, 12))]
        completion = [rng.randint(2, 900) for _ in range(rng.randint(1, 8))]
        eos = rng.randint(0, 1)
        ids, labels = fn(list(prompt), list(completion), eos)
        ids, labels = list(ids), list(labels)
        assert ids == prompt + completion + [eos], (
            "input_ids: the prompt's ids, then the completion's, then the eos id"
        )
        assert len(labels) == len(ids), "one label per input id"
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt), (
            "the prompt's labels must be -100: the loss is on the completion only"
        )
        assert labels[len(prompt) :] == completion + [eos], (
            "the completion's labels are its own ids, eos included (so the model learns to stop)"
        )


def check_block_causal_mask(fn) -> None:
    """``fn(seq_lengths, length)`` -> bool (length, length): causal, within one example only."""
    rng = random.Random(9)
    for _ in range(6):
        lengths = [rng.randint(1, 6) for _ in range(rng.randint(1, 4))]
        length = sum(lengths) + rng.randint(0, 3)  # trailing padding
        got = torch.as_tensor(fn(list(lengths), length)).bool()
        assert got.shape == (length, length), (
            f"shape must be ({length}, {length}), got {tuple(got.shape)}"
        )
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        segment = torch.cat([segment, torch.full((length - len(segment),), -1)])
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        expected = (segment[:, None] == segment[None, :]) & causal
        if torch.equal(got, causal) and not torch.equal(expected, causal):
            raise AssertionError("that is the plain causal mask: examples still see each other")
        assert torch.equal(got, expected), (
            f"seq_lengths {lengths}, length {length}: allow query q to see key k only when "
            "k <= q and both are in the same example (padding positions see only padding)"
        )


def check_trl_matching_settings(answer) -> None:
    """``answer``: the ``SFTConfig`` fields that make TRL train as the course's loop does."""
    expected = {
        "lr_scheduler_type": "constant",
        "weight_decay": 0.01,
        "completion_only_loss": True,
        "bf16": False,
        "train_sampling_strategy": "sequential",
    }
    assert isinstance(answer, dict), "answer with a dict of SFTConfig field names and values"
    for key, value in expected.items():
        assert key in answer, f"missing {key!r}: which SFTConfig default differs from the loop?"
        assert answer[key] == value, f"{key}={answer[key]!r} does not match the course's loop"
