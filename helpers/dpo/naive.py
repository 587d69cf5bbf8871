"""DPO by hand, in plain torch, on a causal LM that carries a LoRA adapter (peft's or the
course's own, ``helpers.lora.naive``).

DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7) trains a policy pi on pairs (x, y_w, y_l)
where y_w is preferred, against a frozen reference pi_ref:

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x))
                              - (log pi(y_l|x) - log pi_ref(y_l|x))))

averaged over pairs. ``beta * (log pi(y|x) - log pi_ref(y|x))`` is the implicit reward of an
answer (section 5); the preference accuracy is the share of pairs whose chosen answer gets the
higher reward. log pi(y|x) is a sum over the answer's tokens only: the prompt is given, not
predicted.

The reference is the same model with its adapter switched off (peft's ``disable_adapter``, or
``scaling = 0`` on the course's own LoRA layers: ``helpers.dpo.adapter_disabled``): the weights
under the adapter, so no second copy of the model sits in memory. To run DPO after SFT,
merge the SFT adapter into the weights first and add a fresh adapter; the reference is then the
SFT model.

Conventions follow TRL 1.16's ``DPOTrainer`` so that ``helpers.dpo.library`` computes the same
numbers: a batch holds the B chosen sequences, then the B rejected ones (2B rows), right-padded;
a text answer gets the eos token appended, and texts are tokenized with the tokenizer's own
special tokens (``add_special_tokens`` at its default, as TRL calls it); the completion starts
where the tokens of the prompt and of prompt + answer part (usually right after the prompt).

Dimension names: B pairs, N = 2B sequences, T tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from helpers.checks import positive_number
from helpers.dpo import (
    METRIC_NAMES,
    adapter_disabled,
    check_adapter,
    check_batch,
    check_records,
    check_training,
)
from helpers.dpo.pairs import to_trl_record


@dataclass
class DPOOutput:
    """What one DPO loss computation gives.

    Attributes:
        loss: the mean DPO loss over the B pairs, a scalar that carries the gradient.
        chosen_rewards, rejected_rewards: (B,) implicit rewards beta * (log pi - log pi_ref).
        metrics: batch means under TRL's log names (``METRIC_NAMES``): the rewards, the
            preference accuracy ``rewards/accuracies``, the margin, the policy log-probs.
        batch: the (N, T) tensors ``input_ids``, ``attention_mask``, ``completion_mask``.
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, float]
    batch: dict[str, torch.Tensor]


@dataclass
class DPOResult:
    """What a training run leaves, one entry per optimizer step: the loss, the preference
    accuracy and the mean reward margin of the step's micro-batch (before the step)."""

    losses: list[float]
    accuracies: list[float]
    margins: list[float]


def _prefix_length(ids: list[int], other: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    while n < min(len(ids), len(other)) and ids[n] == other[n]:
        n += 1
    return n


def _tokenize_pair(tokenizer: PreTrainedTokenizerBase, record: dict) -> dict[str, list[int]]:
    """The pair's prompt, chosen and rejected token ids, as TRL's DPOTrainer cuts them."""
    record = to_trl_record(tokenizer, record)
    prompt = record["prompt"]
    if isinstance(prompt, list):  # conversational: the chat template renders the turns

        def ids(turns, opening=False):
            out = tokenizer.apply_chat_template(
                turns, tokenize=True, return_dict=True, add_generation_prompt=opening
            )
            return list(out["input_ids"])

        prompt_ids = ids(prompt, opening=True)
        full = [ids(prompt + record[side]) for side in ("chosen", "rejected")]
    else:  # text: the answer ends with eos, so the model learns where to stop
        eos = tokenizer.eos_token
        answers = [record[side] for side in ("chosen", "rejected")]
        answers = [a if a.endswith(eos) else a + eos for a in answers]
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = [tokenizer(prompt + answer)["input_ids"] for answer in answers]
    # Tokens can merge across the prompt's end: the completion starts where the sequences part.
    cut = min(_prefix_length(prompt_ids, ids) for ids in full)
    return {
        "prompt_ids": prompt_ids[:cut],
        "chosen_ids": full[0][cut:],
        "rejected_ids": full[1][cut:],
    }


def _collate(pairs: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows: the B chosen sequences, then the B rejected ones, right-padded to the longest."""
    rows = [(p["prompt_ids"], p[side]) for side in ("chosen_ids", "rejected_ids") for p in pairs]
    longest = max(len(prompt) + len(answer) for prompt, answer in rows)
    batch = {"input_ids": [], "attention_mask": [], "completion_mask": []}
    for prompt, answer in rows:
        pad = longest - len(prompt) - len(answer)
        batch["input_ids"].append(prompt + answer + [pad_token_id] * pad)
        batch["attention_mask"].append([1] * (len(prompt) + len(answer)) + [0] * pad)
        batch["completion_mask"].append([0] * len(prompt) + [1] * len(answer) + [0] * pad)
    return {name: torch.tensor(rows) for name, rows in batch.items()}  # each (N, T)


def completion_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(answer | prompt) of each row: the sum of the answer tokens' log-probabilities.

    Args:
        model: a causal LM (with or without an adapter).
        batch: ``input_ids``, ``attention_mask``, ``completion_mask``, each (N, T), N = 2B rows,
            chosen first (as ``dpo_loss`` builds it, ``DPOOutput.batch``).
    Returns:
        ``(chosen_logps, rejected_logps)``, each (B,) in fp32, with the model's graph.
    """
    batch = check_batch(model, batch)
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits
    # Position t predicts token t + 1: drop the last position's logits and the first token.
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (N, T-1, V), fp32 statistics
    targets = input_ids[:, 1:]  # (N, T-1)
    per_token = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    mask = batch["completion_mask"][:, 1:].to(device).bool()  # answer tokens only, no padding
    logps = (per_token * mask).sum(dim=1)  # (N,)
    return logps.chunk(2)  # chosen rows come first


def dpo_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    beta: float = 0.1,
) -> DPOOutput:
    """The DPO loss of a batch of preference pairs, with the implicit rewards and accuracy.

    Args:
        model: the policy: a peft model with a LoRA adapter, or a model with the course's own
            LoRA layers (``helpers.lora.naive``); with the adapter disabled, the reference.
        records: B preference pairs ``{"prompt", "chosen", "rejected"}``, text (the raw task
            prompt: ``helpers.dpo.pairs``) or conversational (lists of turns).
        beta: how far the policy may move from the reference (0.1, TRL's default).
    Returns:
        A ``DPOOutput``; call ``output.loss.backward()`` for the LoRA gradients.
    """
    check_adapter(model, own_lora=True)
    beta = positive_number(beta, "beta")
    records = check_records(records)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = _collate([_tokenize_pair(tokenizer, r) for r in records], pad)  # as TRL pads
    chosen, rejected = completion_logps(model, batch)  # (B,) each
    with torch.no_grad(), adapter_disabled(model):  # the reference: W x alone
        ref_chosen, ref_rejected = completion_logps(model, batch)
    chosen_logratios, rejected_logratios = chosen - ref_chosen, rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()
    means = (
        chosen_rewards.mean(),
        rejected_rewards.mean(),
        (chosen_rewards > rejected_rewards).float().mean(),  # preference accuracy
        (chosen_rewards - rejected_rewards).mean(),
        chosen.detach().mean(),
        rejected.detach().mean(),
    )
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, means, strict=True)}
    return DPOOutput(loss, chosen_rewards, rejected_rewards, metrics, batch)


def dpo_train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    max_steps: int,
    micro_batch_size: int,
    lr: float,
    beta: float = 0.1,
    max_grad_norm: float = 1.0,
    progress: bool = False,
) -> DPOResult:
    """Train the adapter with the DPO loss: AdamW at a constant ``lr``, one micro-batch a step.

    Args:
        records: preference pairs, taken in order ``micro_batch_size`` at a time (the last
            batch of a pass may be smaller), pass after pass until ``max_steps``.
        max_grad_norm: the gradient's global norm is clipped to it before each step.
    Returns:
        A ``DPOResult``.
    """
    check_adapter(model, own_lora=True)
    beta = positive_number(beta, "beta")
    records = check_records(records)
    check_training(max_steps, micro_batch_size, lr, max_grad_norm)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)  # betas 0.9/0.999, weight decay 0.01
    starts = list(range(0, len(records), micro_batch_size))  # one pass, in order
    result = DPOResult([], [], [])
    model.train()
    for step in tqdm(range(max_steps), desc="DPO", disable=not progress):
        start = starts[step % len(starts)]
        out = dpo_loss(model, tokenizer, records[start : start + micro_batch_size], beta)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        result.losses.append(float(out.loss.detach()))
        result.accuracies.append(out.metrics["rewards/accuracies"])
        result.margins.append(out.metrics["rewards/margins"])
    return result
