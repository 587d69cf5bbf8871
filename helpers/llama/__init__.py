"""A small Llama from scratch: the decoder every chapter fine-tunes, written out (chapter 11).

Two twins with the same public names, imported explicitly:

    from helpers.llama import naive, library

``naive`` is the Llama decoder in plain torch (embedding, RMSNorm, RoPE, grouped-query
attention with a causal mask, SwiGLU, output head), with transformers' parameter names so that
one state dict loads into both; ``library`` is transformers' ``LlamaForCausalLM``. Neither is
imported here, so importing the package costs nothing.
"""

from __future__ import annotations

# The names both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = ("build_llama", "load_llama", "llama_logits")

# What the naive twin writes out; a config asking for anything else is refused by name.
SUPPORTED = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "rope_type": "default",
}


def rope_settings(config: object) -> dict:
    """The config's RoPE settings, from transformers 5's ``rope_parameters`` (or 4's
    ``rope_theta`` and ``rope_scaling``)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        scaling = getattr(config, "rope_scaling", None) or {}
        params = {"rope_theta": config.rope_theta, **scaling}
    return {"rope_type": params.get("rope_type", params.get("type", "default")), **params}


def check_config(config: object) -> None:
    """A Llama config both twins can build: a ``LlamaConfig``, with query heads a multiple of
    the key/value heads, and only the features the naive twin writes out."""
    from transformers import LlamaConfig

    from helpers.checks import positive_number, whole_number

    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a transformers LlamaConfig, got {type(config).__name__}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
        whole_number(getattr(config, name), f"config.{name}")
    heads = whole_number(config.num_attention_heads, "config.num_attention_heads")
    kv_heads = whole_number(config.num_key_value_heads, "config.num_key_value_heads")
    if heads % kv_heads:
        raise ValueError(
            f"config.num_attention_heads ({heads}) must be a multiple of "
            f"config.num_key_value_heads ({kv_heads}): each key/value head serves a group"
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim % 2:
        raise ValueError(f"config.head_dim must be even for RoPE, got {head_dim}")
    positive_number(config.rms_norm_eps, "config.rms_norm_eps")
    got = {name: getattr(config, name, want) for name, want in SUPPORTED.items()}
    got["rope_type"] = rope_settings(config)["rope_type"]
    for name, want in SUPPORTED.items():
        if got[name] != want:
            raise ValueError(f"config.{name} must be {want!r} here, got {got[name]!r}")
