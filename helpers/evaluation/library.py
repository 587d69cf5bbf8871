"""Evaluation with the libraries: the same public names as ``helpers.evaluation.naive``.

Which libraries, and why (checked on the course's offline CI machine):

- Hugging Face ``evaluate`` is not used: ``evaluate.load("perplexity")`` fetches the metric's
  script from the Hub (the ``evaluate-metric/perplexity`` Space) at run time, and the metric then
  loads a model by hub id itself; it also averages per-text perplexities instead of weighting
  tokens. lm-evaluation-harness is the reference for multiple-choice scoring but is a heavy
  install for one function. scipy (``scipy.stats.bootstrap``) is not in the course's
  environment, and the course installs nothing for one call.
- So: ``model.generate`` for greedy decoding; the model's own loss function (what
  ``model(..., labels=...)`` computes, ``transformers.loss.loss_utils.ForCausalLMLoss``) for
  NLL and perplexity, applied per row of one batched forward; the course task's scorer
  ``helpers.task.score``; vectorised numpy for the bootstrap.
- ``model(..., labels=...)`` itself is not called: it makes the float32 logits of every
  position at once (2,048 positions x 151,936 entries = 1.16 GiB for Qwen2.5), more than a
  4 GB card has spare. The decoder runs once and ``ForCausalLMLoss`` is applied to slices of
  ``naive.CHUNK_TOKENS`` positions (``shift_labels=`` given, so it shifts nothing itself).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from helpers import checks, task
from helpers.constants import IGNORE_INDEX
from helpers.evaluation import naive


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_tokens: int = naive.CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target-token NLL per sequence, from transformers' causal-LM loss.

    ``ForCausalLMLoss`` with ``num_items_in_batch=1`` returns the sum over targets instead of
    the mean; it runs per row and per slice of ``chunk_tokens`` positions, each slice given its
    already shifted labels (``shift_labels``), so no (T, V) logits exist at once.

    Args:
        input_ids, labels, attention_mask: (B, T), labels ``-100`` where not a target.
        chunk_tokens: the most positions whose logits exist at once.
    Returns:
        ``(nll, n_tokens)``: (B,) float32 sums and (B,) target counts, on the model's device.
    """
    hidden, head = naive.final_hidden(model, input_ids, attention_mask)  # (B, T, H)
    shift_labels = labels[:, 1:].to(hidden.device)  # (B, T-1): position t predicts t + 1
    vocab_size = head.weight.shape[0]
    nll = torch.zeros(len(labels), dtype=torch.float32, device=hidden.device)  # (B,)
    for i in range(len(labels)):
        for start in range(0, shift_labels.shape[1], chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = head(hidden[i, :-1][part])  # (n, V), n <= chunk_tokens
            nll[i] += ForCausalLMLoss(
                logits, None, vocab_size, num_items_in_batch=1, shift_labels=shift_labels[i, part]
            )
    return nll, (shift_labels != IGNORE_INDEX).sum(dim=-1)


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    max_length: int,
    stride: int | None = None,
) -> dict[str, float]:
    """Sliding-window perplexity with the model's own loss, as in the transformers guide
    "Perplexity of fixed-length models", counting targets exactly (each window's summed NLL
    from ``sequence_nll``, so no window's (T, V) logits exist at once).

    Args:
        token_ids: (N,) the token stream; max_length, stride: as in the naive twin.
    Returns:
        ``{"ppl", "nll_sum", "n_tokens"}``.
    """
    naive.check_stream(token_ids, max_length, model)  # transformers would divide 0 by 0
    device = next(model.parameters()).device
    nll_sum, n_scored = 0.0, 0
    for begin, end, first_new in naive.sliding_windows(
        token_ids.numel(), max_length, stride or max_length
    ):
        ids = token_ids[begin:end].unsqueeze(0).to(device)  # (1, T)
        labels = ids.clone()
        labels[:, : first_new - begin] = IGNORE_INDEX
        nll, count = sequence_nll(model, ids, labels)
        nll_sum, n_scored = nll_sum + nll.item(), n_scored + int(count.item())
    return {"ppl": float(np.exp(nll_sum / n_scored)), "nll_sum": nll_sum, "n_tokens": n_scored}


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
) -> torch.Tensor:
    """``model.generate`` with ``do_sample=False`` (greedy); returns only the new tokens.

    Args and Returns as in the naive twin: (B, T) left-padded prompts in, (B, S) tokens out.
    """
    checks.token_ids(input_ids, checks.vocab_size(model), "input_ids")
    if naive.no_new_tokens(input_ids, max_new_tokens):  # generate refuses 0 new tokens
        return input_ids.new_empty(input_ids.shape[0], 0)  # (B, 0)
    device = next(model.parameters()).device  # the tokenizer's tensors are on the CPU
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return out[:, input_ids.shape[1] :]  # (B, S)


@torch.no_grad()
def score_choices(
    model: torch.nn.Module, context_ids: list[int], choice_ids: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All choices of a question in one right-padded batch, scored with the model's loss.

    The batched log-likelihood request of evaluation harnesses: C rows (context + choice),
    padding on the right so it never sits between a context and its choice.

    Returns:
        ``(logprob_sum, n_tokens)``: (C,) float32 and (C,), as in the naive twin.
    """
    naive.check_choices(context_ids, choice_ids, model)
    device = next(model.parameters()).device
    rows = [context_ids + choice for choice in choice_ids]
    width = max(map(len, rows))
    input_ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # (C, T)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        labels[i, len(context_ids) : len(row)] = torch.tensor(row[len(context_ids) :])
    nll, counts = sequence_nll(model, input_ids, labels, attention_mask)
    return -nll, counts


def mc_predictions(
    logprob_sum: torch.Tensor, choices: list[str], n_tokens: torch.Tensor | None = None
) -> dict[str, int]:
    """lm-evaluation-harness' own formulas, vectorised with numpy as the harness writes them
    (``lm_eval/api/task.py``, ``process_results``, ``multiple_choice``): ``np.argmax(lls)``,
    ``np.argmax(lls / completion_len)``, ``np.argmax(lls / byte_length)``.

    Returns:
        ``{"acc": i, "acc_norm": i, "acc_bytes": i[, "acc_per_token": i]}``, as the naive twin.
    """
    lls = np.asarray([float(v) for v in logprob_sum], dtype=np.float64)
    naive.check_mc(list(lls), choices, n_tokens)
    completion_len = np.array([float(len(i)) for i in choices])
    byte_length = np.array([float(len(i.encode("utf-8"))) for i in choices])
    picks = {
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / completion_len)),
        "acc_bytes": int(np.argmax(lls / byte_length)),
    }
    if n_tokens is not None:
        picks["acc_per_token"] = int(np.argmax(lls / np.asarray(n_tokens, dtype=np.float64)))
    return picks


def task_scores(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-example metrics through the course's own scorer ``helpers.task.score``.

    Returns:
        Boolean arrays (n,): ``exact``, ``valid`` and one per field, as in the naive twin.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    for i, gold in enumerate(references):
        naive.parse_reference(gold, i)  # a clear error for a broken reference, as the naive twin
    rows = [task.score(p, g) for p, g in zip(predictions, references, strict=True)]
    return {key: np.array([r[key] for r in rows]) for key in ("exact", "valid", *task.FIELDS)}


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap, every resample at once: one (R, n) index draw, one statistic
    call over the leading axis, ``np.quantile`` for the ends.

    numpy's generator yields the same integers whether drawn as R rows of n or one (R, n)
    block, so with the same seed this equals the naive loop.

    Returns:
        ``(estimate, low, high)``, as in the naive twin.
    """
    values = naive.check_bootstrap(values, n_resamples, confidence)
    n = len(values)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(n_resamples, n))  # (R, n)
    stats = statistic(values[index])  # values[index]: (R, n) or (R, n, k) -> (R,)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(statistic(values)), float(low), float(high)
