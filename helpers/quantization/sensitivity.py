"""Can this model tell int2 from fp32? What quantization and each decoder layer cost a model,
with paired 95 % intervals, so that a lesson's verdict can come out either way.

Used by ``data/make_tiny_model.py`` (its log and the model card), ``tests/test_tiny_model.py``
(the tiny model must rank fp32 <= int8 < NF4 < int3 < int2, and need every layer) and chapter
01's check. Not a twin: it measures, with ``measure.swapped_weights`` and the naive quantizers.

The held-out text is cut into windows of ``seq_len`` tokens; each window's mean negative
log-likelihood (NLL) is one observation. Two weight formats are compared window by window (the
same text under both), and the mean difference gets a normal-approximation interval,
mean +- 1.96 standard errors: with a hundred or more windows the mean is close to normal.

Perplexity is a blunt instrument on a small model of templated text: most tokens are either
certain or a free choice among equals, and a little noise in the weights moves neither much.
``changed_choices`` asks a sharper question: at how many positions does the model's top next
token change (a Wilson interval on the share of positions)?

Why a perplexity step can hide a real cost: quantization moves the weights by an error e, and
the held-out NLL moves by g.e + e.H.e / 2 (gradient g, curvature H). The second term is the cost
of lost precision and is never negative; the first has whatever sign the error happens to have
against the held-out gradient, which is not zero on text the model was not trained on. When the
format is fine (NF4 on a small model) the two are of one size, and the step's sign is luck.
``window_kl`` measures the second term alone: the KL divergence from the full-precision model's
next-token distribution to the quantized one's, position by position (zero only if the format
changes nothing, larger the more it changes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from helpers.evaluation import naive as evaluation
from helpers.quantization import measure
from helpers.quantization import naive as quant

Z95 = 1.959964  # two-sided 95 % normal quantile
RTN_BLOCKSIZE = 64  # the int3 / int2 grids use NF4's block of 64 values


def int8_round_trip(w: torch.Tensor) -> torch.Tensor:
    """Per-row absmax int8, as LLM.int8() stores weights."""
    q, row_absmax = quant.quantize_absmax_int8(w.float(), per_row=True)
    return quant.dequantize_absmax_int8(q, row_absmax).to(w.dtype)


def nf4_round_trip(w: torch.Tensor) -> torch.Tensor:
    """NF4, blocks of 64 (bitsandbytes' 4-bit format without double quantization)."""
    packed, absmax = quant.quantize_nf4(w)
    return quant.dequantize_nf4(packed, absmax, w.shape, dtype=w.dtype)


def rtn_round_trip(
    bits: int, blocksize: int = RTN_BLOCKSIZE
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Round to nearest on ``2**bits - 1`` evenly spaced levels in [-1, 1] times each block's
    absmax (symmetric, with a zero: int3 has 7 levels, int2 three)."""
    code = quant.linear_codebook(bits)

    def round_trip(w: torch.Tensor) -> torch.Tensor:
        codes, absmax = quant.quantize_blockwise(w.float(), code, blocksize)
        return quant.dequantize_blockwise(codes, absmax, code, blocksize).to(w.dtype)

    return round_trip


FORMATS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "fp32": None,
    "int8": int8_round_trip,
    "nf4": nf4_round_trip,
    "int3": rtn_round_trip(3),
    "int2": rtn_round_trip(2),
}


def window_nll(
    model: nn.Module, input_ids: torch.Tensor, seq_len: int = 128, batch_size: int = 32
) -> torch.Tensor:
    """Mean NLL of each window of ``seq_len`` tokens of ``input_ids`` (L,): a (W,) float64
    tensor (``measure.window_nll``), with at least 2 windows, so that an interval exists."""
    if input_ids.dim() == 1 and input_ids.numel() // seq_len < 2:
        raise ValueError(
            f"need at least 2 windows of seq_len={seq_len} tokens for an interval, "
            f"got {input_ids.numel()} tokens"
        )
    return measure.window_nll(model, input_ids, seq_len, batch_size)


def paired_difference(after: torch.Tensor, before: torch.Tensor) -> dict[str, float]:
    """Mean of ``after - before`` over windows with its 95 % interval (normal approximation)."""
    if after.shape != before.shape or after.numel() < 2:
        raise ValueError(
            f"need two per-window NLLs of one shape with 2+ windows, got {tuple(after.shape)} "
            f"and {tuple(before.shape)}"
        )
    return _mean_interval((after - before).double())


def _mean_interval(x: torch.Tensor) -> dict[str, float]:
    """Mean of per-window values with its 95 % interval (normal approximation)."""
    mean, se = x.mean().item(), x.std().item() / math.sqrt(x.numel())
    return {"mean": mean, "low": mean - Z95 * se, "high": mean + Z95 * se}


def format_nll(
    model: nn.Module, input_ids: torch.Tensor, seq_len: int = 128
) -> dict[str, torch.Tensor]:
    """Per-window NLL with every linear weight (but the output head) in each of ``FORMATS``."""
    out = {}
    for name, round_trip in FORMATS.items():
        if round_trip is None:
            out[name] = window_nll(model, input_ids, seq_len)
        else:
            with measure.swapped_weights(model, round_trip):
                out[name] = window_nll(model, input_ids, seq_len)
    return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no .model.layers decoder blocks")
    return layers


@torch.no_grad()
def layer_removed_nll(
    model: nn.Module, input_ids: torch.Tensor, seq_len: int = 128
) -> list[torch.Tensor]:
    """Per-window NLL with each decoder block in turn made the identity: the attention's and the
    MLP's output projections zeroed, so the block adds nothing to the residual stream. The
    weights come back after each, even after an error."""
    out = []
    for layer in decoder_layers(model):
        outputs = [layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight]
        saved = [w.detach().clone() for w in outputs]
        try:
            for w in outputs:
                w.zero_()
            out.append(window_nll(model, input_ids, seq_len))
        finally:
            for w, s in zip(outputs, saved, strict=True):
                w.copy_(s)
    return out


@torch.no_grad()
def top_choices(
    model: nn.Module, input_ids: torch.Tensor, seq_len: int = 128, batch_size: int = 8
) -> torch.Tensor:
    """The model's most likely next token at every position of each window: (W, seq_len)."""
    n_windows = input_ids.numel() // seq_len
    windows = input_ids[: n_windows * seq_len].view(n_windows, seq_len)  # (W, T)
    out = []
    for start in range(0, n_windows, batch_size):
        hidden, head = evaluation.final_hidden(model, windows[start : start + batch_size], None)
        # the head on 64 positions at a time: (b, 64, V) logits at most, never (b, T, V)
        slices = [head(hidden[:, p : p + 64]).argmax(-1) for p in range(0, seq_len, 64)]
        out.append(torch.cat(slices, dim=1).cpu())  # (b, T)
    return torch.cat(out)


@torch.no_grad()
def final_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, seq_len: int = 128, batch_size: int = 8
) -> torch.Tensor:
    """The decoder's last hidden states for each window of ``seq_len`` tokens: (W, seq_len, H)
    on the CPU. Every format shares the output head (it is never quantized), so these are all a
    format changes; keeping them, not the logits, keeps the memory at H, not the vocabulary."""
    n_windows = input_ids.numel() // seq_len
    windows = input_ids[: n_windows * seq_len].view(n_windows, seq_len)  # (W, T)
    out = []
    for start in range(0, n_windows, batch_size):
        hidden, _head = evaluation.final_hidden(model, windows[start : start + batch_size], None)
        out.append(hidden.float().cpu())  # (b, T, H)
    return torch.cat(out)


@torch.no_grad()
def window_kl(
    model: nn.Module, base: torch.Tensor, input_ids: torch.Tensor, round_trip: Callable,
    seq_len: int = 128, batch_size: int = 8,
) -> torch.Tensor:  # fmt: skip
    """Mean KL(full precision || ``round_trip``) per position of each window: a (W,) float64
    tensor, in nats. ``base``: ``final_hidden_states`` of the model as it is, on the same
    ``input_ids``."""
    with measure.swapped_weights(model, round_trip):
        after = final_hidden_states(model, input_ids, seq_len, batch_size)
    if after.shape != base.shape:
        raise ValueError(
            f"base hidden states {tuple(base.shape)} are not of these windows {tuple(after.shape)}"
        )
    head = model.get_output_embeddings()
    # the states are fp32 on the CPU; the head may be fp16 on a GPU
    to_head = {"device": head.weight.device, "dtype": head.weight.dtype}
    out = []
    for b, a in zip(base.split(batch_size), after.split(batch_size), strict=True):
        # the head on 64 positions at a time: (b, 64, V) logits at most
        kl = [
            torch.nn.functional.kl_div(
                torch.log_softmax(head(a[:, p : p + 64].to(**to_head)).float(), -1),
                torch.log_softmax(head(b[:, p : p + 64].to(**to_head)).float(), -1),
                log_target=True, reduction="none",
            ).sum(-1)  # (b, 64)
            for p in range(0, seq_len, 64)
        ]  # fmt: skip
        out.append(torch.cat(kl, dim=1).mean(1).double().cpu())
    return torch.cat(out)


def changed_choices(
    model: nn.Module, input_ids: torch.Tensor, round_trip: Callable, seq_len: int = 128
) -> dict[str, float]:
    """Share of positions whose top next token changes when the linear weights take
    ``round_trip``, with its 95 % Wilson interval."""
    from helpers.evaluation.stats import wilson_interval

    before = top_choices(model, input_ids, seq_len)
    with measure.swapped_weights(model, round_trip):
        after = top_choices(model, input_ids, seq_len)
    changed, n = int((after != before).sum()), before.numel()
    low, high = wilson_interval(changed, n)
    return {"share": changed / n, "low": low, "high": high, "positions": n}


def heldout_ids(tokenizer, n_docs: int | None = None) -> torch.Tensor:
    """``data/corpus/heldout.txt`` (documents never trained on) as the model was trained to
    read text: each line a document, each document followed by the end-of-sequence token (read
    as one string, the lines would meet at newlines the model never saw between documents, and
    its perplexity would double on the tiny model). ``n_docs``: the first n documents only."""
    from helpers.paths import HELDOUT_TEXT

    docs = HELDOUT_TEXT.read_text(encoding="utf-8").splitlines()[:n_docs]
    ids: list[int] = []
    for doc in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
        ids += doc + [tokenizer.eos_token_id]
    return torch.tensor(ids)


def sensitivity_report(model: nn.Module, tokenizer, seq_len: int = 128) -> dict:
    """Perplexity per format and with each layer removed, the paired intervals of each step of
    the ranking fp32 -> int8 -> nf4 -> int3 -> int2 and of each removal against the model as it
    is (differences of mean NLL per window; > 0 means worse), the KL divergence each format
    puts between the model's next-token distributions and its own (``window_kl``), with the
    paired intervals of each step of the same ranking, and the share of positions whose top
    next token each format changes."""
    ids = heldout_ids(tokenizer)
    nll = format_nll(model, ids, seq_len)
    removed = layer_removed_nll(model, ids, seq_len)
    names = list(FORMATS)
    base = final_hidden_states(model, ids, seq_len)
    kl = {name: torch.zeros(base.shape[0], dtype=torch.float64) if f is None
          else window_kl(model, base, ids, f, seq_len) for name, f in FORMATS.items()}  # fmt: skip
    return {
        "windows": int(nll["fp32"].numel()),
        "seq_len": seq_len,
        "perplexity": {k: round(math.exp(v.mean().item()), 4) for k, v in nll.items()},
        "steps": {
            f"{a}->{b}": {k: round(v, 5) for k, v in paired_difference(nll[b], nll[a]).items()}
            for a, b in itertools.pairwise(names)
        },
        "kl": {
            name: {k: round(v, 7) for k, v in _mean_interval(v).items()}
            for name, v in kl.items()
            if FORMATS[name] is not None
        },
        "kl_steps": {
            f"{a}->{b}": {k: round(v, 7) for k, v in paired_difference(kl[b], kl[a]).items()}
            for a, b in itertools.pairwise(names)
        },
        "layer_removed_perplexity": [round(math.exp(v.mean().item()), 4) for v in removed],
        "layer_removed": [
            {k: round(v, 5) for k, v in paired_difference(v, nll["fp32"]).items()} for v in removed
        ],
        "changed_choices": {
            name: {k: round(v, 5) for k, v in changed_choices(model, ids, f, seq_len).items()}
            for name, f in FORMATS.items()
            if f is not None
        },
    }
