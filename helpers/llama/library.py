"""A Llama with transformers: ``LlamaForCausalLM``, the same public names as ``naive.py``.

transformers' model is the reference the naive twin is checked against: the same parameter
names, the same state dict, the same logits (fp32, within 1e-5). It picks its attention
kernel itself (PyTorch's scaled_dot_product_attention by default), which is where the two
round differently.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.checks import token_ids
from helpers.llama import check_config


def build_llama(
    config: LlamaConfig, state_dict: dict[str, torch.Tensor] | None = None
) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` for ``config``, with the weights of ``state_dict`` or, without one,
    initialised from torch's random generator. Returns the model, in eval mode."""
    check_config(config)
    model = LlamaForCausalLM(config)
    if state_dict is not None:
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be a dict of tensors, got {type(state_dict).__name__}"
            )
        if config.tie_word_embeddings:
            state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise ValueError(f"state_dict does not fit config: {err}") from None
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not fit config: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    return model.eval()


def load_llama(model_dir: str | Path) -> LlamaForCausalLM:
    """The Llama saved in ``model_dir`` (config.json and model.safetensors), in fp32."""
    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"model_dir: {model_dir / name} does not exist")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    return model.eval()


def llama_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, T, V) for ``input_ids`` (B, T)."""
    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"model must be a LlamaForCausalLM, got {type(model).__name__}")
    token_ids(input_ids, model.config.vocab_size, "input_ids")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be (batch, tokens) with tokens >= 1, got {tuple(input_ids.shape)}"
        )
    return model(input_ids=input_ids, use_cache=False).logits
