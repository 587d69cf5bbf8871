"""Evaluation (chapter 05): perplexity, greedy decoding, multiple-choice scoring, task metrics
and bootstrap confidence intervals.

Two twins with the same public names, imported explicitly:

    from helpers.evaluation import naive, library

``naive`` is plain torch and numpy, written to be read; ``library`` leans on transformers
(``model.generate``, the model's own loss through ``labels=``), the course's ``helpers.task``
scorer and vectorised numpy. Neither is imported here. This module holds only the statistics
that both bootstrap twins accept: each takes a sample of shape ``(..., n)`` or ``(..., n, k)``
and reduces the ``n`` axis, so one function serves one resample (naive) or all at once
(library).
"""

from __future__ import annotations

import numpy as np

PUBLIC_NAMES = (
    "sequence_nll",
    "perplexity",
    "greedy_generate",
    "score_choices",
    "mc_predictions",
    "task_scores",
    "bootstrap_ci",
)


def mean(sample: np.ndarray) -> np.ndarray:
    """Mean of per-example values. sample: (..., n) -> (...)."""
    return sample.mean(axis=-1)


def paired_difference(sample: np.ndarray) -> np.ndarray:
    """Mean of column 0 minus mean of column 1, same examples. sample: (..., n, 2) -> (...)."""
    return sample[..., 0].mean(axis=-1) - sample[..., 1].mean(axis=-1)


def token_perplexity(sample: np.ndarray) -> np.ndarray:
    """Token-weighted perplexity exp(sum nll / sum tokens). sample: (..., n, 2) of
    (nll_sum, n_tokens) per example -> (...)."""
    return np.exp(sample[..., 0].sum(axis=-1) / sample[..., 1].sum(axis=-1))
