"""Byte-level BPE by hand, in plain Python: learn merges from a corpus, then encode and decode.

Byte-pair encoding (Sennrich et al. 2016, arXiv:1508.07909; byte-level as in GPT-2, Radford et
al. 2019) starts from one symbol per byte, so any text can be encoded and nothing is ever
unknown, and learns merges: again and again, the most frequent pair of adjacent symbols in the
corpus becomes one new symbol. Encoding a text replays the merges in the order they were
learnt; decoding joins the symbols and turns them back into bytes.

Public API (the same names as ``helpers.bpe.library``, which calls Hugging Face ``tokenizers``):

    bytes_to_unicode() -> {byte: char}     the 256 printable stand-ins for the 256 byte values
    pre_tokenize(text) -> [word, ...]      split into words, each written in those stand-ins
    train_bpe(texts, vocab_size, special_tokens) -> tokenizer
    get_vocab(tokenizer) -> {token: id}    get_merges(tokenizer) -> [(left, right), ...]
    encode(tokenizer, text) -> [id, ...]   decode(tokenizer, ids) -> text

Where ``tokenizers`` makes a choice, this twin makes the same one, so that both learn the same
merges in the same order and give the same ids (``tokenizers/src/models/bpe/trainer.rs``):
ids go to the special tokens first, then to the 256 byte symbols in code-point order, then to
each merge's new token; a pair's count is how many times it sits side by side in the corpus
(overlaps included: "aaa" holds ("a", "a") twice); among pairs with the same count, the one
whose two ids are smallest wins (compared as (left id, right id)); training stops at
``vocab_size`` tokens or when no pair is left.

One known difference: the word split needs Unicode's table of letters and digits, and the
``regex`` module ships a newer table than the one inside ``tokenizers`` (Oniguruma). Code
points that only the newer Unicode versions assign (17,144 of them with regex 2026.11.19 and
tokenizers 0.23.3, none assigned in Python 3.11's Unicode 14; U+0558 is one) count as letters
here and as symbols there, so a text holding one splits differently. Every other character
splits the same way (checked over all of Unicode).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import regex  # the `re` module has no \p{L} (any letter); transformers depends on `regex`

from helpers.bpe import (
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    check_ids,
    check_text,
    check_training_args,
    checked_texts,
)

# GPT-2's split into words (its encoder.py, used by tokenizers' ByteLevel pre-tokenizer): a few
# English contractions, an optional space then letters, then digits, then other symbols, and
# runs of whitespace. A merge never crosses a word boundary, so " the" can become one token
# but "the." cannot.
WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """A printable character for each of the 256 byte values, as GPT-2 chose them.

    Bytes that are already printable and not a space (``!`` to ``~``, ``¡`` to ``¬``, ``®`` to
    ``ÿ``) stand for themselves; the other 68 (control bytes, the space, ...) get the code
    points 256, 257, ... in order. So a space is written ``Ġ`` (chr(256 + 32)) and a newline
    ``Ċ``, and every token of the vocabulary is a readable string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def pre_tokenize(text: str) -> list[str]:
    """Split ``text`` into words and write each word's UTF-8 bytes as byte symbols.

    "Café au lait" -> ["CafÃ©", "Ġau", "Ġlait"]: "é" is two bytes (C3 A9), so two symbols.
    """
    check_text(text)
    words = WORD_PATTERN.findall(text)
    return ["".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8")) for word in words]


@dataclass
class Tokenizer:
    """What training learns (the naive counterpart of ``tokenizers.Tokenizer``): ``vocab`` maps
    each token to its id; ``merges`` lists the pairs
    in the order they were learnt (their rank); ``special_tokens`` are matched whole in a
    text before anything else."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    special_tokens: list[str]


def count_pairs(word: list[int]) -> Counter:
    """Adjacent pairs in one word: [5, 7, 5, 7] -> {(5, 7): 2, (7, 5): 1}."""
    return Counter(zip(word, word[1:], strict=False))


def merge_pair(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``word`` by ``new_id``, left to right:
    merging (a, a) in [a, a, a] gives [aa, a]."""
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def best_pair(pair_counts: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The most frequent pair; a tie goes to the smallest (left id, right id), as in
    ``tokenizers`` (its ``Merge`` ordering in trainer.rs)."""
    return max(pair_counts, key=lambda pair: (pair_counts[pair], -pair[0], -pair[1]))


def initial_vocab(special_tokens: list[str]) -> dict[str, int]:
    """The first ids: the special tokens, then the 256 byte symbols in code-point order."""
    vocab = {token: i for i, token in enumerate(special_tokens)}
    for char in sorted(BYTE_TO_CHAR.values()):
        vocab.setdefault(char, len(vocab))
    return vocab


def merge_everywhere(pair, new_id, words, counts, pair_counts, holders) -> Counter:
    """Merge ``pair`` in every word that holds it, and move those words' pair counts from
    before the merge to after it. Returns the new pair counts (zeros dropped)."""
    for i in holders.pop(pair):
        pair_counts.subtract({p: n * counts[i] for p, n in count_pairs(words[i]).items()})
        words[i] = merge_pair(words[i], pair, new_id)
        for p, n in count_pairs(words[i]).items():
            pair_counts[p] += n * counts[i]
            holders.setdefault(p, set()).add(i)
    return +pair_counts  # unary + keeps the counts above 0


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = VOCAB_SIZE,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Learn byte-level BPE merges from ``texts`` until the vocabulary holds ``vocab_size``
    tokens or no pair of symbols is left to merge.

    Args:
        texts: the training texts (any iterable of str: read once, one at a time).
        vocab_size: the most tokens to learn, special tokens and the 256 bytes included.
        special_tokens: tokens that get the first ids and are never split.
    Returns:
        a ``Tokenizer`` (vocab, merges in order, special tokens).
    """
    special_tokens = check_training_args(vocab_size, special_tokens)
    # Words and how often each occurs: after this, the corpus is never read again.
    word_counts = Counter(w for text in checked_texts(texts) for w in pre_tokenize(text))
    vocab = initial_vocab(special_tokens)
    id_to_token = list(vocab)
    words = [[vocab[char] for char in word] for word in word_counts]  # each word as ids
    counts = list(word_counts.values())
    pair_counts, holders = Counter(), {}  # pair -> count in the corpus, -> words holding it
    for i, word in enumerate(words):
        for pair, n in count_pairs(word).items():
            pair_counts[pair] += n * counts[i]
            holders.setdefault(pair, set()).add(i)
    merges = []
    while len(vocab) < vocab_size and pair_counts:
        pair = best_pair(pair_counts)
        token = id_to_token[pair[0]] + id_to_token[pair[1]]
        if token not in vocab:  # two merges can spell the same token: it keeps one id
            vocab[token] = len(id_to_token)
            id_to_token.append(token)
        merges.append((id_to_token[pair[0]], id_to_token[pair[1]]))
        pair_counts = merge_everywhere(pair, vocab[token], words, counts, pair_counts, holders)
    return Tokenizer(vocab, merges, special_tokens)


def check_tokenizer(tokenizer: object) -> Tokenizer:
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be what naive.train_bpe returns, got {type(tokenizer).__name__}"
        )
    return tokenizer


def get_vocab(tokenizer: Tokenizer) -> dict[str, int]:
    """Every token and its id (special tokens included)."""
    return dict(check_tokenizer(tokenizer).vocab)


def get_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The merges in the order they were learnt: rank 0 first."""
    return list(check_tokenizer(tokenizer).merges)


def encode_word(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the merges to one pre-tokenized word: again and again, merge the adjacent pair
    that was learnt first, until no pair of the word was ever learnt."""
    symbols = list(word)
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:], strict=False))
        first = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if first not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):  # every occurrence, left to right
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == first:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``: special tokens are cut out whole first; each piece between them is
    pre-tokenized into words, and each word merged by ``encode_word``."""
    check_tokenizer(tokenizer)
    check_text(text)
    ranks = {pair: rank for rank, pair in enumerate(tokenizer.merges)}
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)  # longest match wins
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
    ids = []
    for piece in pieces:
        if piece in tokenizer.special_tokens:
            ids.append(tokenizer.vocab[piece])
            continue
        for word in pre_tokenize(piece):
            ids += [tokenizer.vocab[token] for token in encode_word(word, ranks)]
    return ids


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids``: join the tokens, turn each byte symbol back into its byte, and read
    the bytes as UTF-8 (a sequence cut inside a character decodes to U+FFFD there)."""
    check_tokenizer(tokenizer)
    id_to_token = {i: token for token, i in tokenizer.vocab.items()}
    data = bytearray()
    for i in check_ids(ids, len(id_to_token)):
        token = id_to_token[i]
        if token in tokenizer.special_tokens:
            data += token.encode("utf-8")  # written as is, not in byte symbols
        else:
            data += bytes(CHAR_TO_BYTE[char] for char in token)
    return data.decode("utf-8", errors="replace")
