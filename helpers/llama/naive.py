"""A Llama decoder by hand, in plain torch, that loads transformers' ``LlamaForCausalLM`` weights.

One forward pass, from token ids to next-token logits (Touvron et al. 2023, arXiv:2302.13971):

    h = embed(ids)
    for each layer:
        h = h + attention(rms_norm(h))     queries and keys rotated by RoPE, causal mask
        h = h + swiglu_mlp(rms_norm(h))
    logits = head(rms_norm(h))             head: its own matrix, or the embedding (tied)

Public API (the same names as ``helpers.llama.library``, which is transformers' model):

    build_llama(config, state_dict=None) -> model   from a LlamaConfig; weights from a state dict
    load_llama(model_dir) -> model                   config.json + model.safetensors
    llama_logits(model, input_ids) -> logits (B, T, V)

Parameters carry transformers' names (``model.layers.0.self_attn.q_proj.weight``, ...), so a
``LlamaForCausalLM`` state dict loads unchanged. Every step computes what transformers computes
(``models/llama/modeling_llama.py``): RMSNorm in fp32, RoPE in its "rotate half" layout (the
two halves of each head, not interleaved pairs), softmax in fp32. No padding mask and no
key/value cache: a batch is rows of equal length, read from position 0.

Dimension names in shape comments: B batch, T tokens, D hidden size, H query heads, K
key/value heads, Dh head size, F the MLP's inner size, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from helpers.checks import token_ids
from helpers.llama import check_config, rope_settings

if TYPE_CHECKING:
    from transformers import LlamaConfig


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): LayerNorm without the mean."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # fp32 even for an fp16 model: a sum of squares overflows fp16
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angle ``position * theta^(-2i / Dh)`` for each position and each of
    the Dh/2 frequencies, written twice side by side to match ``rotate_half`` (RoPE, Su et al.
    2021, arXiv:2104.09864). Returns two (T, Dh) tensors."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float), inv_freq)  # (T, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, Dh)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x[i], x[i + Dh/2]) pair by its position's angle. x: (B, heads, T, Dh)."""
    return x * cos + rotate_half(x) * sin


def causal_mask(seq_len: int) -> torch.Tensor:
    """(T, T): 0 where a query may look (its own position and earlier), -inf after it."""
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(diagonal=1)
    return torch.zeros(seq_len, seq_len).masked_fill(future, float("-inf"))


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245): H query heads share K
    key/value heads, H / K queries per group, so the key/value cache is H / K times smaller."""

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        d, dh = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * dh, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * dh, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * dh, bias=False)
        self.o_proj = nn.Linear(self.n_heads * dh, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions live in q.k only
        # Each key/value head serves H / K consecutive query heads (transformers' repeat_kv).
        k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)  # (B, H, T, Dh)
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)  # (B, H, T, Dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, T)
        scores = scores + causal_mask(T).to(scores.device)
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(out)  # (B, T, D)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, arXiv:2002.05202): D -> F -> D."""

    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then the MLP, each reading a normalised copy."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    """Embedding, the layers, the final norm: ``model.*`` in transformers' names."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Llama(nn.Module):
    """The decoder and its output head: ``forward(input_ids (B, T))`` -> logits (B, T, V)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.tied = bool(config.tie_word_embeddings)
        if not self.tied:  # tied: the head reuses the embedding matrix, no weights of its own
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.theta = float(rope_settings(config)["rope_theta"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)  # (B, T, D)
        head_dim = self.model.layers[0].self_attn.head_dim
        cos, sin = rope_cos_sin(input_ids.shape[1], head_dim, self.theta)  # (T, Dh) each
        cos, sin = cos.to(h), sin.to(h)
        for layer in self.model.layers:
            h = layer(h, cos, sin)
        h = self.model.norm(h)
        head = self.model.embed_tokens.weight if self.tied else self.lm_head.weight  # (V, D)
        return h @ head.T  # (B, T, V)


def init_weights(model: Llama, std: float) -> None:
    """transformers' initialisation: N(0, std) for every matrix, 1 for every norm weight."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


def build_llama(config: LlamaConfig, state_dict: dict[str, torch.Tensor] | None = None) -> Llama:
    """A Llama for ``config``, with the weights of ``state_dict`` (a ``LlamaForCausalLM`` state
    dict) or, without one, initialised from torch's random generator.

    Args:
        config: a transformers ``LlamaConfig``.
        state_dict: parameter name -> tensor, in transformers' names; with tied embeddings
            ``lm_head.weight`` may be absent (it is the embedding).
    Returns:
        the model, in eval mode.
    """
    check_config(config)
    model = Llama(config)
    if state_dict is None:
        init_weights(model, config.initializer_range)
        return model.eval()
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if model.tied:
        state_dict.pop("lm_head.weight", None)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ValueError(f"state_dict does not fit config: {err}") from None
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not fit config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()


def load_llama(model_dir: str | Path) -> Llama:
    """The Llama saved in ``model_dir`` (config.json and model.safetensors, as
    ``save_pretrained`` writes them; a single safetensors file, no pickle)."""
    from transformers import LlamaConfig

    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"model_dir: {model_dir / name} does not exist")
    config = LlamaConfig.from_pretrained(model_dir)
    return build_llama(config, load_file(model_dir / "model.safetensors"))


def llama_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, T, V) for ``input_ids`` (B, T)."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be what naive.build_llama returns, got {type(model).__name__}")
    token_ids(input_ids, model.config.vocab_size, "input_ids")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be (batch, tokens) with tokens >= 1, got {tuple(input_ids.shape)}"
        )
    return model(input_ids)
