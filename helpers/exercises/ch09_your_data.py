"""Checkers for the exercises of chapter 09 (your data: SFT, packing, tracking).

Each takes the learner's answer and raises AssertionError with a hint when it is wrong.
"""

from __future__ import annotations

import random

import torch

from helpers.constants import IGNORE_INDEX


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
    """``fn(seq_lengths, length)`` -> bool (length, length): causal, within one example only.

    Only the rows of real tokens are checked. The rows of trailing padding positions may hold
    any convention (padding sees only padding, as ``helpers.packing.naive``; padding sees
    nothing; padding joins the last example): their outputs carry label -100 and no real token
    can see them, since they come after every real token of the row.
    """
    rng = random.Random(9)
    for _ in range(6):
        lengths = [rng.randint(1, 6) for _ in range(rng.randint(1, 4))]
        length = sum(lengths) + rng.randint(0, 3)  # trailing padding
        got = torch.as_tensor(fn(list(lengths), length)).bool()
        assert got.shape == (length, length), (
            f"shape must be ({length}, {length}), got {tuple(got.shape)}"
        )
        real = sum(lengths)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        expected = (segment[:, None] == segment[None, :]) & causal[:real, :real]  # (real, real)
        rows = got[:real]  # (real, length): the queries that are real tokens
        if torch.equal(rows, causal[:real]) and len(lengths) > 1:
            raise AssertionError("that is the plain causal mask: examples still see each other")
        assert not rows[:, real:].any(), "a real token must not attend to the padding after it"
        assert torch.equal(rows[:, :real], expected), (
            f"seq_lengths {lengths}, length {length}: allow query q to see key k only when "
            "k <= q and both are in the same example"
        )


# SFTConfig fields a learner may add beside the four, as long as they keep the course loop's
# behaviour: explicit defaults (completion_only_loss is already True for prompt/completion data)
# and the loop's own choices.
_NEUTRAL = {
    "completion_only_loss": True,
    "packing": False,
    "padding_free": False,
    "optim": "adamw_torch",
    "max_grad_norm": 1.0,
    "fp16": False,
}
# Fields that come from the run (``SFTRun``: sizes and learning rate), not from a default.
_FROM_RUN = (
    "learning_rate", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "seed", "output_dir",
)  # fmt: skip


def check_trl_matching_settings(answer) -> None:
    """``answer``: the four ``SFTConfig`` defaults that must change for TRL to train as the
    course's loop does. Other fields are accepted only when they keep the loop's behaviour
    (``_NEUTRAL``); a field that changes training (``packing=True``) or one that comes from the
    run rather than from a default (``learning_rate``) is rejected."""
    expected = {
        "lr_scheduler_type": "constant",
        "weight_decay": 0.01,
        "bf16": False,
        "train_sampling_strategy": "sequential",
    }
    assert isinstance(answer, dict), "answer with a dict of SFTConfig field names and values"
    for key, value in expected.items():
        assert key in answer, f"missing {key!r}: which SFTConfig default differs from the loop?"
        assert answer[key] == value, f"{key}={answer[key]!r} does not match the course's loop"
    for key, value in answer.items():
        if key in expected:
            continue
        assert key not in _FROM_RUN, (
            f"{key!r} comes from the run (SFTRun), not from a default that differs: leave it out"
        )
        assert key in _NEUTRAL, (
            f"{key}={value!r} is not one of the defaults that differ; it is not part of the answer"
        )
        assert value == _NEUTRAL[key], f"{key}={value!r} changes what SFTTrainer trains"
