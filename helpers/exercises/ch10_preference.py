"""Checkers for chapter 10 (preference tuning). Each raises AssertionError with a hint when wrong."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# Draws of the four log-probability tensors: (pairs, beta). beta differs from 1 in every draw,
# so an answer that forgets it cannot pass by luck.
DRAWS = ((4, 0.1), (7, 0.5), (16, 2.0))


def _dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """The DPO loss as ``helpers.dpo.naive.dpo_loss`` computes it from the four log-probs."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


def _draw(n: int, seed: int) -> list[torch.Tensor]:
    """Four (n,) answer log-probabilities: policy chosen, policy rejected, reference chosen,
    reference rejected. The reference is drawn apart from the policy, so leaving it out moves
    the loss."""
    g = torch.Generator().manual_seed(seed)
    return [-20.0 * torch.rand(n, generator=g, dtype=torch.float64) - 1.0 for _ in range(4)]


def check_dpo_loss(fn: Callable) -> None:
    """The learner's ``fn(chosen, rejected, ref_chosen, ref_rejected, beta)`` must give the mean
    DPO loss (Rafailov et al. 2023, eq. 7) on random log-probabilities."""
    for seed, (n, beta) in enumerate(DRAWS):
        logps = _draw(n, seed)
        expected = _dpo_loss(*logps, beta)
        got = torch.as_tensor(fn(*[t.clone() for t in logps], beta), dtype=torch.float64)
        assert got.numel() == 1, (
            f"return one number (the mean over pairs), got shape {tuple(got.shape)}"
        )
        if torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
            continue
        chosen, rejected, ref_chosen, ref_rejected = logps
        hints = [
            (
                -F.logsigmoid(beta * (chosen - rejected)).mean(),
                "the reference terms are missing: each answer's reward is its log-ratio to the "
                "reference, beta * (log pi(y|x) - log pi_ref(y|x)), not its log-prob alone",
            ),
            (
                -F.logsigmoid(-beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean(),
                "the sign is flipped: the loss must fall as the chosen answer's log-ratio rises "
                "above the rejected one's",
            ),
            (
                _dpo_loss(*logps, 1.0),
                "beta is missing: scale the difference of log-ratios by beta before the sigmoid",
            ),
            (
                -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).sum(),
                "that is the sum over pairs: return the mean",
            ),
        ]
        for wrong, hint in hints:
            if torch.allclose(got, wrong, rtol=1e-6, atol=1e-9):
                raise AssertionError(hint)
        raise AssertionError(
            f"{n} pairs, beta={beta}: expected {float(expected):.6f}, got {float(got):.6f}: the "
            "loss is -mean(log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))))"
        )
