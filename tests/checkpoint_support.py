"""A small, fast training setup shared by the checkpoint tests (not a test module itself)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from helpers.data import load_task
from helpers.lora import library as lora_library
from helpers.lora import naive as lora_naive
from helpers.paths import TINY_MODEL_DIR
from helpers.qlora import checkpoint

TARGETS = ("q_proj", "v_proj")
# A run short enough for many trials: 6 steps of 4 records of 48 tokens, a checkpoint each step.
RUN = dict(
    max_steps=6,
    save_every=1,
    micro_batch_size=4,
    lr=1e-3,
    max_seq_len=48,
    seed=0,
    warmup_steps=2,
    progress=False,
)


def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def make_model_dir(path: Path, vocab_size: int, seed: int = 0) -> Path:
    """A random two-layer Llama saved as safetensors."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def build(model_dir: Path, seed: int = 0, twin=lora_naive, r: int = 4, alpha: float = 8,
          targets=TARGETS, dropout: float = 0.1):  # fmt: skip
    """The base from disk plus LoRA; ``seed`` decides the LoRA init (a resume overwrites it)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    return twin.add_lora(model, r, alpha, targets, dropout)


def data(n: int = 24):
    return load_task("train").select(range(n))


def train(model, tok, records, folder, **changes):
    """``train_with_checkpoints`` with ``RUN``'s settings, some changed; messages are kept."""
    said: list[str] = []
    losses = checkpoint.train_with_checkpoints(
        model, tok, records, folder=folder, say=said.append, **{**RUN, **changes}
    )
    return losses, said


__all__ = ["build", "data", "lora_library", "make_model_dir", "tokenizer", "train", "RUN"]
