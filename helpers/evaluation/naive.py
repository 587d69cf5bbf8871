"""Evaluation from scratch: every number a fine-tune is judged by, in plain torch and numpy.

Dimensions: B sequences in a batch, T tokens per sequence, V vocabulary entries, C choices of a
multiple-choice question, R bootstrap resamples, n examples.

- ``sequence_nll``: the negative log-likelihood of the target tokens of each sequence, summed.
- ``perplexity``: exp(token-weighted mean NLL) of a long token stream, scored through a sliding
  window when the stream is longer than the model's context.
- ``greedy_generate``: the decoding loop (argmax, one token at a time, with a KV cache).
- ``score_choices``: multiple-choice scoring by the log-likelihood of each choice.
- ``mc_predictions``: the choice each of lm-evaluation-harness' normalisations picks.
- ``task_scores``: the course task's metrics per example (exact match, valid JSON, fields).
- ``bootstrap_ci``: a percentile bootstrap confidence interval of any statistic.

``library.py`` exposes the same names through transformers and vectorised numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import torch

from helpers import checks
from helpers.constants import IGNORE_INDEX
from helpers.task import parse_answer

# Positions whose logits exist at once when scoring. Logits over a real vocabulary are the
# largest tensor of an evaluation: 2,048 positions x 151,936 entries (Qwen2.5) in float32 are
# 1.16 GiB, and log_softmax makes a second one. 256 positions are 148 MiB per float32 copy.
CHUNK_TOKENS = 256
FIELDS = ("category", "sentiment", "urgency")


def final_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder's last hidden states (B, T, H), after its final norm, and the output head.

    A causal LM's logits are ``head(hidden)``; running the decoder alone lets the caller apply
    the head to a few positions at a time instead of all T at once (B, T, V).
    """
    device = next(model.parameters()).device  # the inputs may come from the tokenizer (CPU)
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    decoder = model.get_decoder()  # peft's PeftModel forwards this to the wrapped model
    out = decoder(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state, model.get_output_embeddings()


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood of each sequence's target tokens.

    The logits of at most ``chunk_tokens`` target positions exist at a time: the decoder runs
    once, then the output head and log_softmax run over slices of the scored positions.

    Args:
        input_ids: (B, T) token ids.
        labels: (B, T) the ids to score, ``-100`` where a token is not a target (prompt, pad).
            Position t is predicted from positions < t, so ``labels[:, 0]`` is never scored.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; None means all real.
        chunk_tokens: the most positions whose (n, V) float32 log-probabilities exist at once.
    Returns:
        ``(nll, n_tokens)``: (B,) float32 sums of -log p(target), and (B,) target counts, on
        the model's device (the inputs are moved there: they may come from the tokenizer, on
        the CPU).
    """
    hidden, head = final_hidden(model, input_ids, attention_mask)  # (B, T, H)
    targets = labels[:, 1:].to(hidden.device)  # (B, T-1): position t predicts token t + 1
    is_target = targets != IGNORE_INDEX
    rows, cols = is_target.nonzero(as_tuple=True)  # (N,), (N,): the scored positions only
    nll = torch.zeros(len(targets), dtype=torch.float32, device=hidden.device)  # (B,)
    for start in range(0, len(rows), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]  # (n,)
        logp = torch.log_softmax(head(hidden[r, c]).float(), dim=-1)  # (n, V)
        picked = logp.gather(-1, targets[r, c].unsqueeze(-1)).squeeze(-1)  # (n,)
        nll.index_add_(0, r, -picked)  # each position's NLL onto its sequence's sum
    return nll, is_target.sum(dim=-1)


def sliding_windows(n_tokens: int, max_length: int, stride: int):
    """Yield (begin, end, first_new) for a sliding window over n_tokens positions.

    Each window covers [begin, end); tokens before ``first_new`` were scored by an earlier
    window and only give context (the strided method of the transformers perplexity guide).
    """
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length={max_length}, got {stride}")
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        yield begin, end, prev_end
        prev_end = end
        if end == n_tokens:
            break


def check_stream(token_ids: torch.Tensor, max_length: int, model=None) -> None:
    """Perplexity scores every token but the first: it needs a 1-D stream of 2 tokens or more,
    and windows of 2 tokens or more (a 1-token window has no token with context); with
    ``model``, ids inside its vocabulary (an id past it would crash the embedding look-up)."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
        got = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids)
        raise TypeError(f"token_ids must be a 1-D tensor of token ids (N,), got {got}")
    if token_ids.numel() < 2:
        raise ValueError(
            f"token_ids has {token_ids.numel()} token(s): perplexity needs at least 2, since "
            "the first token has no context and is never scored"
        )
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(
            f"max_length must be an integer >= 2 (a window's tokens), got {max_length!r}"
        )
    if model is not None:
        checks.token_ids(token_ids, checks.vocab_size(model))


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    max_length: int,
    stride: int | None = None,
) -> dict[str, float]:
    """Token-weighted perplexity of one long token stream, with a sliding window.

    Perplexity = exp(sum of token NLLs / number of scored tokens): every token weighs the same,
    however the text is cut. With ``stride < max_length`` each window re-reads
    ``max_length - stride`` tokens of context, so later tokens are scored with more history.

    Args:
        token_ids: (N,) the token stream.
        max_length: window length, at most the model's context.
        stride: step between windows (default ``max_length``: no overlap).
    Returns:
        ``{"ppl", "nll_sum", "n_tokens"}``. A token with no context in its window is not
        scored: the stream's first token, and without overlap the first of every window.
    Raises:
        ValueError: fewer than 2 tokens, or ``max_length`` < 2: nothing would be scored.
    """
    check_stream(token_ids, max_length, model)
    device = next(model.parameters()).device
    nll_sum, n_scored = 0.0, 0
    for begin, end, first_new in sliding_windows(
        token_ids.numel(), max_length, stride or max_length
    ):
        ids = token_ids[begin:end].unsqueeze(0).to(device)  # (1, T)
        labels = ids.clone()
        labels[:, : first_new - begin] = IGNORE_INDEX  # context only: scored before
        nll, count = sequence_nll(model, ids, labels)
        nll_sum, n_scored = nll_sum + nll.item(), n_scored + int(count.item())
    return {"ppl": float(np.exp(nll_sum / n_scored)), "nll_sum": nll_sum, "n_tokens": n_scored}


def no_new_tokens(input_ids: torch.Tensor, max_new_tokens: int) -> bool:
    """True for max_new_tokens == 0 (the answer is B empty rows); raise on a bad count."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    return max_new_tokens == 0


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
) -> torch.Tensor:
    """Greedy decoding by hand, with a KV cache: pick the most likely token, append, repeat.

    Args:
        input_ids: (B, T) prompts, LEFT-padded so every prompt ends at the last column.
        attention_mask: (B, T) 1 for real tokens, 0 for the left padding.
    Returns:
        (B, S) the new tokens, S <= max_new_tokens; a row that has emitted eos continues with
        ``pad_token_id`` until every row has finished (as ``model.generate`` does). For
        ``max_new_tokens=0``, (B, 0). On the model's device (the prompts are moved there).
    """
    checks.token_ids(input_ids, checks.vocab_size(model), "input_ids")
    if no_new_tokens(input_ids, max_new_tokens):
        return input_ids.new_empty(input_ids.shape[0], 0)  # (B, 0): nothing asked, nothing run
    device = next(model.parameters()).device  # the tokenizer's tensors are on the CPU
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("greedy_generate needs left padding: set tokenizer.padding_side='left'")
    # A row's positions count its real tokens only; left pads get position 0 (masked anyway).
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    # Prefill: run the whole prompt once; the model returns its keys and values (the cache).
    # logits_to_keep=1: only the last position's logits (B, 1, V), as model.generate asks for;
    # the whole prompt's (B, T, V) would be the largest tensor of the call.
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=1,
    )
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for _ in range(max_new_tokens):
        next_token = out.logits[:, -1].float().argmax(dim=-1)  # (B,)
        next_token = next_token.masked_fill(finished, pad_token_id)
        new_tokens.append(next_token)
        finished |= next_token == eos_token_id
        if finished.all():
            break
        # Decode step: feed only the new token; attention reads the cached keys and values.
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(finished), 1)], 1)
        position_ids = position_ids[:, -1:] + 1  # (B, 1)
        out = model(
            input_ids=next_token.unsqueeze(-1),  # (B, 1)
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=out.past_key_values,
        )
    return torch.stack(new_tokens, dim=1)  # (B, S)


def check_choices(context_ids: list[int], choice_ids: list[list[int]], model=None) -> None:
    if len(context_ids) == 0:
        raise ValueError(
            "context_ids is empty: the first token of each choice would have no context to be "
            "predicted from (and would go unscored); start the context with the BOS token"
        )
    if len(choice_ids) == 0:
        raise ValueError("choice_ids is empty: a question needs at least one choice")
    for i, choice in enumerate(choice_ids):
        if len(choice) == 0:
            raise ValueError(
                f"choice {i} has no tokens: its log-likelihood would be 0, the largest possible, "
                "so it would always win; drop it or give it text"
            )
    if model is not None:
        ids = torch.tensor([*context_ids, *(i for choice in choice_ids for i in choice)])
        checks.token_ids(ids, checks.vocab_size(model), "context_ids and choice_ids")


@torch.no_grad()
def score_choices(
    model: torch.nn.Module, context_ids: list[int], choice_ids: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of each choice as the continuation of a context, one forward per choice.

    MMLU-style harnesses pick the choice with the largest sum of log-probabilities, or the
    largest per-token mean (length-normalised, so long answers are not penalised for length).

    Args:
        context_ids: the question's token ids (prompt, chat template included).
        choice_ids: C lists of token ids, one per choice.
    Returns:
        ``(logprob_sum, n_tokens)``: (C,) float32 sums of log p(choice token), (C,) lengths.
    Raises:
        ValueError: an empty context (the choice's first token would have nothing to be
            predicted from), no choices, or an empty choice (log p = 0 would win).
    """
    check_choices(context_ids, choice_ids, model)
    device = next(model.parameters()).device
    sums, lengths = [], []
    for choice in choice_ids:
        ids = torch.tensor([context_ids + choice], device=device)  # (1, T)
        labels = ids.clone()
        labels[:, : len(context_ids)] = IGNORE_INDEX  # score the choice's tokens only
        nll, count = sequence_nll(model, ids, labels)
        sums.append(-nll[0])
        lengths.append(count[0])
    return torch.stack(sums), torch.stack(lengths)


def mc_predictions(
    logprob_sum: torch.Tensor, choices: list[str], n_tokens: torch.Tensor | None = None
) -> dict[str, int]:
    """The choice each normalisation of lm-evaluation-harness picks, by the harness' names.

    lm-evaluation-harness, ``lm_eval/api/task.py``, ``ConfigurableTask.process_results``
    (``multiple_choice`` branch): ``acc`` takes ``argmax(lls)``; ``acc_norm`` divides each
    log-likelihood by ``len(choice)``, the choice's length in characters
    (``completion_len``); ``acc_bytes`` by ``len(choice.encode("utf-8"))`` (``byte_length``).
    Lengths are of the choice text alone, without the space the harness puts before it. The
    first of equal scores wins (``np.argmax``). ``acc_per_token`` (divide by the number of
    tokens) is not a harness metric; with one-token choices it equals ``acc``.

    Args:
        logprob_sum: (C,) summed log p of each choice (``score_choices``).
        choices: the C choice texts, in the same order.
        n_tokens: (C,) token counts; adds ``acc_per_token`` when given.
    Returns:
        ``{"acc": i, "acc_norm": i, "acc_bytes": i[, "acc_per_token": i]}``: chosen indices.
    """
    scores = [float(v) for v in logprob_sum]
    check_mc(scores, choices, n_tokens)
    divisors = {
        "acc": [1.0] * len(choices),
        "acc_norm": [float(len(c)) for c in choices],
        "acc_bytes": [float(len(c.encode("utf-8"))) for c in choices],
    }
    if n_tokens is not None:
        divisors["acc_per_token"] = [float(n) for n in n_tokens]
    picks = {}
    for name, divisor in divisors.items():
        normed = [score / d for score, d in zip(scores, divisor, strict=True)]
        best = 0
        for i, value in enumerate(normed):
            if value > normed[best]:  # strictly greater: the first maximum wins, as np.argmax
                best = i
        picks[name] = best
    return picks


def check_mc(scores: list[float], choices: list[str], n_tokens) -> None:
    if len(choices) == 0:
        raise ValueError("choices is empty: a question needs at least one choice")
    if len(scores) != len(choices) or (n_tokens is not None and len(n_tokens) != len(choices)):
        raise ValueError(
            f"logprob_sum has {len(scores)} scores for {len(choices)} choices"
            + ("" if n_tokens is None else f" and n_tokens {len(n_tokens)} counts")
        )
    for i, (score, text) in enumerate(zip(scores, choices, strict=True)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"choice {i} ({text!r}) is not a non-empty string: no length")
        if not np.isfinite(score):
            raise ValueError(f"logprob_sum[{i}] is {score}: a log-likelihood must be finite")
    if n_tokens is not None and any(int(n) <= 0 for n in n_tokens):
        raise ValueError(f"n_tokens must all be >= 1, got {[int(n) for n in n_tokens]}")


def parse_reference(text: str, index: int) -> dict:
    """A gold answer: a JSON object with the three fields."""
    try:
        gold = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(
            f"reference {index} is not valid JSON ({err}): {str(text)[:60]!r}"
        ) from None
    if not isinstance(gold, dict) or any(f not in gold for f in FIELDS):
        raise ValueError(
            f"reference {index} must be a JSON object with fields {FIELDS}: {text[:60]!r}"
        )
    return gold


def task_scores(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-example metrics of the course task (a review in, JSON with three fields out).

    Args:
        predictions: n generated answers; references: n gold JSON answers.
    Returns:
        Boolean arrays of shape (n,): ``valid`` (JSON with the three fields as strings),
        ``exact`` (valid and all three right), and one per field. Their means are the
        valid-output rate, exact match and per-field accuracy.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    rows = []
    for pred_text, gold_text in zip(predictions, references, strict=True):
        gold, pred = parse_reference(gold_text, len(rows)), parse_answer(pred_text) or {}
        valid = all(isinstance(pred.get(f), str) for f in FIELDS)
        fields = {f: pred.get(f) == gold[f] for f in FIELDS}
        rows.append({"valid": valid, "exact": valid and all(fields.values()), **fields})
    return {key: np.array([r[key] for r in rows]) for key in ("exact", "valid", *FIELDS)}


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval (Efron and Tibshirani 1993, ch. 13).

    Draw n examples with replacement, compute the statistic, repeat; the interval is the
    central ``confidence`` share of those statistics. One resample per loop iteration.

    Args:
        values: (n,) or (n, k) per-example values (rows are resampled together).
        statistic: reduces a sample of shape (n,) or (n, k) to a number (see
            ``helpers.evaluation.mean``, ``paired_difference``, ``token_perplexity``).
        seed: seeds numpy's PCG64 generator, so the interval is reproducible.
    Returns:
        ``(estimate, low, high)``: the statistic on all data and the interval's ends.
    Raises:
        ValueError: NaN or inf in ``values``, ``confidence`` not in (0, 1), or fewer than
            ``2 / (1 - confidence)`` resamples.
    """
    values = check_bootstrap(values, n_resamples, confidence)
    n = len(values)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for i in range(n_resamples):
        stats[i] = statistic(values[rng.integers(0, n, size=n)])
    low, high = (_percentile(stats, q) for q in ((1 - confidence) / 2, (1 + confidence) / 2))
    return float(statistic(values)), low, high


def check_bootstrap(values, n_resamples: int, confidence: float) -> np.ndarray:
    """Data with no NaN/inf, 0 < confidence < 1, and enough resamples to put at least one in
    each tail of the interval: n_resamples * (1 - confidence) / 2 >= 1."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or len(values) == 0:
        raise ValueError(f"values must be (n,) or (n, k) with n >= 1, got shape {values.shape}")
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"values has {int(bad.sum())} NaN or inf entries (first in row {row}): the interval "
            "would not mean anything; drop or fix those examples"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    needed = math.ceil(2 / (1 - confidence) - 1e-9)
    if not isinstance(n_resamples, int) or n_resamples < needed:
        raise ValueError(
            f"n_resamples={n_resamples!r} is too few for a {confidence:.0%} interval: each tail "
            f"must hold at least one resample, so use n_resamples >= {needed} (1000 is usual)"
        )
    return values


def _percentile(stats: np.ndarray, q: float) -> float:
    """The q-quantile of the numbers, interpolating linearly between order statistics
    (numpy's default "linear" method)."""
    ordered = np.sort(stats)
    pos = q * (len(ordered) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))
