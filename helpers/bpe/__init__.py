"""Byte-pair encoding, the tokenizer a language model is born with (chapter 11).

Two twins with the same public names, imported explicitly:

    from helpers.bpe import naive, library

``naive`` learns and applies merges in plain Python, written to be read; ``library`` does the
same through Hugging Face ``tokenizers`` (a ``BpeTrainer`` behind a ``ByteLevel``
pre-tokenizer), set up exactly as ``data/make_tiny_model.py`` trains the course's tokenizer.
Neither is imported here, so importing the package costs nothing.

Shared by both twins: the tiny model's settings (``SPECIAL_TOKENS``, ``VOCAB_SIZE``), the
corpus it was trained on (``tokenizer_corpus``) and the checks of what the twins are given.
"""

from __future__ import annotations

# The names both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "bytes_to_unicode",
    "pre_tokenize",
    "train_bpe",
    "get_vocab",
    "get_merges",
    "encode",
    "decode",
)

import json
from collections.abc import Iterable, Iterator, Sequence

# The course's tokenizer (data/tiny-llama/tokenizer.json): ids 0..4 are these, in this order.
SPECIAL_TOKENS = ("<|pad|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")
# Asked for; the course's corpus runs out of pairs to merge at 1,410.
VOCAB_SIZE = 2048
# Byte-level BPE starts from one symbol per byte value.
N_BYTES = 256


def tokenizer_corpus() -> list[str]:
    """The texts the course's tokenizer learnt from, in order: every line of
    ``data/corpus/pretrain.txt``, then the content of every message of
    ``data/corpus/chat.jsonl`` (as ``data/make_tiny_model.py`` reads them)."""
    from helpers.paths import DATA_DIR

    corpus = DATA_DIR / "corpus"
    texts = (corpus / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    chat = (corpus / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(chat, start=1):
        try:
            texts += [message["content"] for message in json.loads(line)["messages"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{corpus / 'chat.jsonl'}, line {number}: expected "
                f'{{"messages": [{{"role": ..., "content": ...}}, ...]}} ({err})'
            ) from None
    return texts


def check_training_args(vocab_size: object, special_tokens: object) -> list[str]:
    """``vocab_size`` leaves room for the special tokens and the 256 byte symbols;
    ``special_tokens`` is a sequence of distinct, non-empty strings. Returns them as a list."""
    from helpers.checks import whole_number

    if isinstance(special_tokens, str) or not isinstance(special_tokens, Sequence):
        raise TypeError(
            f"special_tokens must be a list of strings, got {type(special_tokens).__name__}"
        )
    for i, token in enumerate(special_tokens):
        if not isinstance(token, str) or not token:
            raise ValueError(f"special_tokens[{i}] must be a non-empty string, got {token!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens holds a token twice: {list(special_tokens)!r}")
    low = len(special_tokens) + N_BYTES
    whole_number(
        vocab_size, f"vocab_size (at least {len(special_tokens)} special + 256 bytes)", low
    )
    return list(special_tokens)


def checked_texts(texts: object) -> Iterator[str]:
    """The texts one by one, each checked to be a ``str`` as it is read (so a stream is never
    held in memory). One string passed as ``texts`` is refused: it would train on its
    characters one by one."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(
            f"texts must be an iterable of strings (a list, a file's lines, a generator), "
            f"got {type(texts).__name__}: to train on one text, pass [text]"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        yield text


def check_text(text: object) -> str:
    """A text to encode."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def check_ids(ids: object, vocab_size: int) -> list[int]:
    """Token ids to decode: ints in ``0..vocab_size - 1``."""
    if hasattr(ids, "tolist"):  # a tensor or an array of ids
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a list of token ids, got {type(ids).__name__}")
    ids = list(ids)
    for i, token_id in enumerate(ids):
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TypeError(f"ids[{i}] must be an int, got {token_id!r}")
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"ids[{i}] = {token_id} is outside the vocabulary 0..{vocab_size - 1}: "
                "were these ids made by another tokenizer?"
            )
    return ids
