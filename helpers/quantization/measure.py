"""Measuring what quantization costs: held-out perplexity, weights swapped for their quantized
round trip, and the bytes a format really stores. Used by chapter 01 (and any later chapter
that wants a perplexity); not a twin, so it lives beside ``naive`` and ``library``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from helpers.evaluation import naive as evaluation


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers a 4-bit or 8-bit load quantizes: every ``nn.Linear`` but the output
    head (transformers keeps ``lm_head`` in full precision, as bitsandbytes' docs advise)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }


@contextmanager
def swapped_weights(
    model: nn.Module, round_trip: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[nn.Module]:
    """Within the ``with`` block, each quantizable weight W is replaced by ``round_trip(W)``
    (quantize then dequantize): the model computes with exactly the values a quantized model
    would hold. The original weights come back on exit, even after an error.
    """
    saved = {}
    try:
        with torch.no_grad():
            for name, linear in quantizable_linears(model).items():
                # keep the originals in CPU memory: on a GPU a second copy may not fit
                saved[name] = linear.weight.detach().to("cpu", copy=True)
                linear.weight.copy_(round_trip(linear.weight.detach()).to(linear.weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, linear in quantizable_linears(model).items():
                if name in saved:
                    linear.weight.copy_(saved[name])


@torch.no_grad()
def window_nll(
    model: nn.Module, input_ids: torch.Tensor, max_seq_len: int = 128, batch_size: int = 8
) -> torch.Tensor:
    """Mean negative log-likelihood of each window of ``max_seq_len`` tokens of a long token
    stream: a (W,) float64 tensor, W = L // max_seq_len (the tail is dropped).

    Args:
        model: a causal LM (logits for each position).
        input_ids: int64 (L,), the held-out text, tokenized once; it goes to the model's device.
        max_seq_len: window length; each window predicts its tokens 2..max_seq_len.
        batch_size: windows per forward pass. Their logits never exist all at once: the NLL
            comes from ``helpers.evaluation.naive.sequence_nll``, which applies the output head
            to slices of ``CHUNK_TOKENS`` positions (8 windows of 256 tokens of a 151,936-entry
            vocabulary would be 1.16 GiB of float32 logits, twice with log_softmax).
    """
    if input_ids.dim() != 1:
        raise ValueError(
            f"input_ids must be one token stream (L,), got shape {tuple(input_ids.shape)}"
        )
    n_windows = input_ids.numel() // max_seq_len
    if n_windows == 0:
        raise ValueError(f"need at least {max_seq_len} tokens, got {input_ids.numel()}")
    windows = input_ids[: n_windows * max_seq_len].view(n_windows, max_seq_len)  # (W, T)
    device = next(model.parameters()).device
    out = []
    for start in range(0, n_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)  # (b, T)
        nll, n_tokens = evaluation.sequence_nll(model, batch, batch)  # (b,), (b,)
        out.append((nll.double() / n_tokens.double()).cpu())
    return torch.cat(out)


def perplexity(
    model: nn.Module, input_ids: torch.Tensor, max_seq_len: int = 128, batch_size: int = 8
) -> float:
    """Token-weighted perplexity of a long token stream cut into windows of ``max_seq_len``
    (see ``window_nll``; every window predicts the same number of tokens, so the mean of the
    windows' means is the mean over tokens).

    Returns:
        exp(total negative log-likelihood / number of predicted tokens).
    """
    return math.exp(window_nll(model, input_ids, max_seq_len, batch_size).mean().item())


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes the tensors occupy (numel times element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)
