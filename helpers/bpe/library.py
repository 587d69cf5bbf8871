"""Byte-level BPE with Hugging Face ``tokenizers``: the same public names as ``naive.py``.

``train_bpe`` sets up the trainer exactly as ``data/make_tiny_model.py`` trains the course's
tokenizer: a ``BPE`` model behind a ``ByteLevel`` pre-tokenizer (GPT-2's word split, no space
added in front), a ``ByteLevel`` decoder, and a ``BpeTrainer`` whose initial alphabet is all
256 byte symbols, so a byte unseen in training still encodes. The Rust trainer and encoder are
what real tokenizers (GPT-2, Llama 3, Qwen) are made and run with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from helpers.bpe import (
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    check_ids,
    check_text,
    check_training_args,
    checked_texts,
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable character for each byte value, as transformers ships it (the table
    it uses to convert GPT-2-style tokenizers to ``tokenizers``)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode as table

    return dict(table())


def pre_tokenize(text: str) -> list[str]:
    """``text`` split into words in byte symbols by the ``ByteLevel`` pre-tokenizer."""
    check_text(text)
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return [word for word, _offsets in splitter.pre_tokenize_str(text)]


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = VOCAB_SIZE,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Learn byte-level BPE merges from ``texts`` with ``tokenizers``' ``BpeTrainer``.

    Args:
        texts: the training texts (any iterable of str: read once, one at a time).
        vocab_size: the most tokens to learn, special tokens and the 256 bytes included.
        special_tokens: tokens that get the first ids and are never split.
    Returns:
        a ``tokenizers.Tokenizer``.
    """
    special_tokens = check_training_args(vocab_size, special_tokens)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(checked_texts(texts), trainer=trainer)
    return tokenizer


def check_tokenizer(tokenizer: object) -> Tokenizer:
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    return tokenizer


def get_vocab(tokenizer: Tokenizer) -> dict[str, int]:
    """Every token and its id (special tokens included)."""
    return check_tokenizer(tokenizer).get_vocab(with_added_tokens=True)


def get_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The merges in the order they were learnt, read from the tokenizer's JSON form (older
    ``tokenizers`` wrote each merge as one string "left right": byte symbols hold no space)."""
    merges = json.loads(check_tokenizer(tokenizer).to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (special tokens in the text are matched whole; none are added)."""
    check_tokenizer(tokenizer)
    return tokenizer.encode(check_text(text), add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids``, special tokens kept."""
    check_tokenizer(tokenizer)
    return tokenizer.decode(check_ids(ids, tokenizer.get_vocab_size()), skip_special_tokens=False)
