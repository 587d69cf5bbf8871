"""GRPO by hand, in plain torch, on a causal LM with a LoRA adapter (peft's or the course's
own), on given rollouts.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, section 4.1) samples G answers o_1..o_G
to each prompt from the policy that was current (pi_old), scores them with a reward r_i, and
uses the group's own statistics as the baseline (no value model):

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)                      (the same A for every token)
    ratio_t = pi(o_t | ...) / pi_old(o_t | ...)
    loss_t = -min(ratio_t * A_i, clip(ratio_t, 1 - eps, 1 + eps) * A_i) + beta * KL_t
    KL_t = ratio_t * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)   (Schulman's k3 estimator,
                                                   weighted by the ratio as TRL does by default)

The token losses are averaged over all answer tokens of the batch (``loss_type="dapo"``, TRL
1.16's default, from DAPO, arXiv:2503.14476) or per answer then over answers (``"grpo"``, the
paper's form). The reference for the KL term is the model with its adapter disabled.

Conventions follow TRL 1.16's ``GRPOTrainer`` (``_generate_and_score_completions`` and
``_compute_loss``): prompts left-padded, answers right-padded, the std unbiased (n - 1), beta 0
by default (no KL, no reference pass).

A step of N rows need not be one backward pass: with ``rows_per_backward = n`` the rows go
through forward and backward n at a time, each part's loss summed over its tokens (or answers)
and divided by the *whole* batch's count, so that the parts' gradients add up to the whole
batch's. A plain mean within each part would not: it weighs the tokens of a short part more. Rewards come from ``helpers.grpo.task_reward`` on the
answers decoded without special tokens, as TRL decodes them.

Dimension names: B prompts, G answers per prompt, N = B * G rows, P prompt tokens, C answer
tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from helpers.checks import finite_tensor, whole_number
from helpers.dpo import adapter_disabled, check_adapter
from helpers.grpo import check_rollouts, check_settings, encode_rollouts, task_reward


@dataclass
class GRPOOutput:
    """What one GRPO loss computation gives.

    Attributes:
        loss: the scalar loss, with the LoRA gradients' graph (without one when the function
            ran the backward passes itself, ``rows_per_backward``).
        rewards: (N,) the task reward of each answer.
        advantages: (N,) each answer's reward, normalised within its group.
        batch: ``prompt_ids``, ``prompt_mask`` (N, P), ``completion_ids``, ``completion_mask`` (N, C).
    """

    loss: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    batch: dict[str, torch.Tensor]


def _group_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4), each group being G consecutive rewards.

    Args:
        rewards: (N,) with N = B * G.
    Returns:
        (N,) advantages; a group whose answers all scored the same gets 0 (nothing to learn).
    """
    whole_number(num_generations, "num_generations", low=2)
    finite_tensor(rewards, "rewards")
    if rewards.ndim != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be (B * G,) with G = num_generations = {num_generations}, "
            f"got shape {tuple(rewards.shape)}"
        )
    groups = rewards.view(-1, num_generations)  # (B, G)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)  # unbiased, n - 1, as TRL's nanstd
    return ((groups - mean) / (std + 1e-4)).view(-1)  # (N,)


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to the longest with ``value`` (on the left or right), and the mask of real
    tokens."""
    longest = max(len(row) for row in rows)
    ids, mask = [], []
    for row in rows:
        pad = [value] * (longest - len(row))
        ids.append(pad + row if left else row + pad)
        ones, zeros = [1] * len(row), [0] * len(pad)
        mask.append(zeros + ones if left else ones + zeros)
    return torch.tensor(ids), torch.tensor(mask)


def _token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(o_t | prompt, o_<t) of each answer token: (N, C), fp32 statistics."""
    device = next(model.parameters()).device
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1).to(device)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).to(device)
    n_answer = batch["completion_ids"].shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, P + C, V)
    logits = logits[:, -n_answer - 1 : -1].float()  # (N, C, V): the positions that predict o_t
    targets = batch["completion_ids"].to(device).unsqueeze(-1)  # (N, C, 1)
    return F.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)  # (N, C)


def _rows_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    rows: slice,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None,
    beta: float,
    epsilon: float,
    loss_type: str,
    n_rows: int,
    n_tokens: torch.Tensor,
) -> torch.Tensor:
    """The share of the batch's loss that the rows ``rows`` carry: summed over their tokens (or
    answers), divided by the whole batch's answer tokens (``dapo``) or rows (``grpo``), so the
    shares of all rows add up to the loss of the whole batch, and so do their gradients."""
    part = {k: v[rows] for k, v in batch.items()}  # (n, P) and (n, C): the batch's own padding
    logps = _token_logps(model, part)  # (n, C)
    advantages = advantages[rows].to(logps.device)  # (n, 1)
    mask = part["completion_mask"].to(logps.device).float()
    old = logps.detach() if old_logps is None else old_logps[rows].to(logps.device)
    ratio = torch.exp(logps - old)  # (n, C)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # pessimistic bound (PPO)
    if beta:
        with torch.no_grad(), adapter_disabled(model):
            ref = _token_logps(model, part)
        kl = torch.exp(ref - logps) - (ref - logps) - 1  # (n, C), >= 0, unbiased for KL(pi|ref)
        # Weighted by the ratio (DeepSeek-V3.2, arXiv:2512.02556; TRL's use_bias_correction_kl,
        # on by default): the answers came from pi_old, not pi. Even where the ratio is 1 its
        # gradient is not 0, so this changes the KL gradient on-policy too.
        per_token = per_token + beta * kl * ratio
    if loss_type == "dapo":  # every answer token of the whole batch weighs the same
        return (per_token * mask).sum() / n_tokens.to(logps.device)
    # "grpo": each answer weighs the same, whatever its length: its own mean, over all N answers
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / n_rows


def grpo_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    completions: list[str],
    num_generations: int,
    beta: float = 0.0,
    epsilon: float = 0.2,
    loss_type: Literal["dapo", "grpo"] = "dapo",
    old_logps: torch.Tensor | None = None,
    rows_per_backward: int | None = None,
) -> GRPOOutput:
    """The GRPO loss of given rollouts: G answers to each task record.

    Args:
        model: the policy: a peft model with a LoRA adapter, or a model with the course's own
            LoRA layers (``helpers.lora.naive``).
        records: B task records (``prompt``, and the reference JSON as ``completion``).
        completions: B * G answer texts, the G answers to ``records[b]`` at b * G .. b * G + G - 1.
        beta: weight of the KL term to the reference (the model, adapter disabled); 0: none.
        epsilon: the ratio is clipped to [1 - epsilon, 1 + epsilon].
        old_logps: (N, C) per-token log-probs of the policy that sampled the answers; None: this
            policy (ratio 1, one optimizer step per sampled batch, TRL's default).
        rows_per_backward: None: the loss comes back with its graph, for the caller's
            ``backward``. A number n: this function runs the forward and backward passes on n
            rows at a time (the last group of rows may be smaller), so that only n rows'
            activations are held at once; each part is scaled by the whole batch's token (or
            row) count, so the gradients it leaves in ``.grad`` add up to those of the whole
            batch's loss, which comes back without a graph.
    Returns:
        A ``GRPOOutput``.
    """
    check_adapter(model, own_lora=True)
    check_rollouts(records, completions, num_generations)
    beta, epsilon = check_settings(beta, epsilon, loss_type)
    if rows_per_backward is not None:
        whole_number(rows_per_backward, "rows_per_backward")
    prompt_ids, completion_ids = encode_rollouts(tokenizer, records, completions, num_generations)
    pad = tokenizer.pad_token_id
    batch = dict(zip(("prompt_ids", "prompt_mask"), _pad(prompt_ids, pad, left=True), strict=True))
    batch |= dict(
        zip(
            ("completion_ids", "completion_mask"),
            _pad(completion_ids, pad, left=False),
            strict=True,
        )
    )
    answers = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    golds = [records[i // num_generations]["completion"] for i in range(len(completions))]
    rewards = torch.tensor(task_reward(answers, golds))  # (N,)
    advantages = _group_advantages(rewards, num_generations).unsqueeze(1)  # (N, 1)
    shape = tuple(batch["completion_ids"].shape)  # (N, C)
    if old_logps is not None and (
        not isinstance(old_logps, torch.Tensor) or tuple(old_logps.shape) != shape
    ):
        got = (
            tuple(old_logps.shape)
            if isinstance(old_logps, torch.Tensor)
            else type(old_logps).__name__
        )
        raise ValueError(f"old_logps must be (N, C) = {shape}, got {got}")
    if old_logps is not None:
        old_logps = old_logps.detach()
    n_rows = shape[0]
    n_tokens = batch["completion_mask"].sum().float().clamp(min=1.0)
    settings = (advantages, old_logps, beta, epsilon, loss_type, n_rows, n_tokens)
    if rows_per_backward is None:
        loss = _rows_loss(model, batch, slice(0, n_rows), *settings)
    else:
        loss = 0.0
        for start in range(0, n_rows, rows_per_backward):  # gradients add up in .grad
            part = _rows_loss(model, batch, slice(start, start + rows_per_backward), *settings)
            part.backward()  # frees this part's activations before the next part's forward
            loss = loss + part.detach()
    return GRPOOutput(loss, rewards, advantages.squeeze(1).detach().cpu(), batch)
