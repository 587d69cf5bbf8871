"""GRPO, group relative policy optimisation (chapter 10): sample G answers per prompt, score
each with a reward the task can check, and push up the answers that beat their group's mean.

Two twins with the same public names, imported explicitly:

    from helpers.grpo import naive, library

``naive`` computes the loss by hand in plain torch; ``library`` asks TRL's ``GRPOTrainer``,
with the sampled answers given (fixed rollouts) instead of generated, so that both see the same
tokens. This module holds what both twins share: the task's reward, and how prompts and answers
become token ids. It imports nothing heavy until a function is called.
"""

from __future__ import annotations

# The names both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = ("GRPOOutput", "grpo_loss")

LOSS_TYPES = ("dapo", "grpo")  # the two the twins share (TRL 1.16 has six more)
REWARD_PARTS = 4  # valid JSON, then one part per correct field (helpers.task.FIELDS)


def task_reward(completions: list[str], answer: list[str], **_) -> list[float]:
    """The task's verifiable reward of each answer, in [0, 1]: a quarter for JSON with the three
    fields as strings, a quarter for each field equal to the reference (``helpers.task.score``).

    The signature is TRL's reward-function one: ``completions`` are the decoded answers, and
    each dataset column comes as a keyword (the reference JSON in the column ``answer``; TRL
    keeps the name ``completion`` for the answers themselves). Other keywords are ignored.
    """
    from helpers.task import FIELDS, score

    if len(completions) != len(answer):
        raise ValueError(
            f"task_reward: {len(completions)} completions but {len(answer)} reference answers"
        )
    rewards = []
    for text, gold in zip(completions, answer, strict=True):
        verdict = score(text, gold)
        rewards.append((verdict["valid"] + sum(verdict[f] for f in FIELDS)) / REWARD_PARTS)
    return rewards


def check_rollouts(records: object, completions: object, num_generations: object) -> int:
    """B task records and B * G answer texts, G consecutive answers per record; returns G."""
    from helpers.checks import whole_number

    whole_number(num_generations, "num_generations", low=2)  # a group of one has no spread
    if not isinstance(records, list | tuple) or not records:
        raise ValueError(f"records must be a non-empty list of task records, got {records!r}")
    for number, record in enumerate(records):
        if not isinstance(record, dict) or not {"prompt", "completion"} <= set(record):
            raise ValueError(
                f"records[{number}] must be a task record with 'prompt' and 'completion'"
            )
    if (
        not isinstance(completions, list | tuple)
        or len(completions) != len(records) * num_generations
    ):
        got = (
            len(completions)
            if isinstance(completions, list | tuple)
            else type(completions).__name__
        )
        raise ValueError(
            f"completions must hold num_generations={num_generations} answers per record "
            f"({len(records) * num_generations} in all), got {got}"
        )
    for number, text in enumerate(completions):
        if not isinstance(text, str):
            raise ValueError(f"completions[{number}] must be a string, got {type(text).__name__}")
    return num_generations


def check_settings(beta: object, epsilon: object, loss_type: object) -> tuple[float, float]:
    """The loss settings both twins take: beta >= 0, 0 < epsilon < 1, a loss type they share."""
    from helpers.checks import positive_number

    beta = positive_number(beta, "beta", allow_zero=True)
    epsilon = positive_number(epsilon, "epsilon")
    if not epsilon < 1:
        raise ValueError(
            f"epsilon must be below 1 (the ratio is clipped to 1 +- epsilon), got {epsilon}"
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return beta, epsilon


def encode_rollouts(tokenizer, records: list[dict], completions: list[str], num_generations: int):
    """Token ids of each (prompt, answer) row, G rows per record, as both twins feed the model.

    The prompt is the chat template's user turn opening the answer (``format_prompt``); each
    answer ends with eos, as a generation that stopped by itself does.

    Returns:
        ``(prompt_ids, completion_ids)``: two lists of B * G lists of ints.
    """
    from helpers.task import format_prompt

    prompt_ids, completion_ids = [], []
    for number, text in enumerate(completions):
        prompt = format_prompt(tokenizer, records[number // num_generations]["prompt"])
        prompt_ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        answer = tokenizer(text, add_special_tokens=False)["input_ids"]
        completion_ids.append(answer + [tokenizer.eos_token_id])
    return prompt_ids, completion_ids
