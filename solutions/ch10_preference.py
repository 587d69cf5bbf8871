"""Solutions to the exercises of chapter 10 (preference tuning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The mean DPO loss of B pairs from four (B,) answer log-probabilities.

    Each answer's implicit reward is beta times its log-ratio to the reference; the loss asks the
    chosen answer's reward to exceed the rejected one's (a logistic loss on the margin).
    """
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)  # (B,)
    return -F.logsigmoid(beta * margin).mean()
