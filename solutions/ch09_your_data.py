"""Solutions to the exercises of chapter 09 (your data). Try them first."""

from __future__ import annotations

import torch

from helpers.constants import IGNORE_INDEX


def completion_labels(
    prompt_ids: list[int], completion_ids: list[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion + eos, and labels that train on the completion only.

    Returns:
        ``(input_ids, labels)``, two lists of the same length; labels are -100 on the prompt.
    """
    answer = completion_ids + [eos_id]
    return prompt_ids + answer, [IGNORE_INDEX] * len(prompt_ids) + answer


def block_causal_mask(seq_lengths: list[int], length: int) -> torch.Tensor:
    """Where attention is allowed in one packed row of ``length`` tokens.

    Returns:
        A bool tensor (length, length): True where key <= query and both are in one example.
    """
    segment = torch.repeat_interleave(torch.arange(len(seq_lengths)), torch.tensor(seq_lengths))
    segment = torch.cat([segment, torch.full((length - len(segment),), -1)])  # (T,)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return (segment[:, None] == segment[None, :]) & causal


# The SFTConfig defaults that differ from the course's loop, set to the loop's behaviour.
TRL_MATCHING_SETTINGS = {
    "lr_scheduler_type": "constant",  # SFTConfig decays linearly by default
    "weight_decay": 0.01,  # torch AdamW's default; TrainingArguments' is 0.0
    "bf16": False,  # SFTConfig turns bf16 on by default
    "train_sampling_strategy": "sequential",  # the records come in the loop's shuffled order
}
