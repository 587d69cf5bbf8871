"""Solutions to the exercises of chapter 05 (evaluation)."""

from __future__ import annotations

import numpy as np
import torch


def token_perplexity(nll_sums: np.ndarray, n_tokens: np.ndarray) -> float:
    """exp(total NLL / total tokens): every token weighs the same."""
    return float(np.exp(np.sum(nll_sums) / np.sum(n_tokens)))


@torch.no_grad()
def greedy_no_cache(
    model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int
) -> torch.Tensor:
    """Greedy decoding that re-runs the whole sequence every step. input_ids: (1, T)."""
    sequence = input_ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=sequence).logits  # (1, T + step, V)
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        sequence = torch.cat([sequence, next_token], dim=1)
        if next_token.item() == eos_token_id:
            break
    return sequence[:, input_ids.shape[1] :]  # (1, S)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile interval of mean(a) - mean(b), resampling examples (pairs) together."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    index = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    diffs = a[index].mean(axis=1) - b[index].mean(axis=1)  # (R,)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(a.mean() - b.mean()), float(low), float(high)
