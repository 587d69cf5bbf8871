"""Byte-level BPE: the naive twin learns what ``tokenizers`` learns, merge for merge.

Both twins train on the course's tokenizer corpus (the texts ``data/make_tiny_model.py``
trains on); they must learn the same merges in the same order, give every token the same id,
and encode any text to the same ids. The library twin must also reproduce the shipped
tokenizer (data/tiny-llama/tokenizer.json). Training times are recorded, never asserted.
"""

from __future__ import annotations

import json
import time

import pytest

from helpers.bpe import SPECIAL_TOKENS, library, naive, tokenizer_corpus
from helpers.paths import HELDOUT_TEXT, TINY_MODEL_DIR

TWINS = [naive, library]
# Non-ASCII (2-, 3- and 4-byte characters, a combining accent), control bytes, contractions,
# runs of spaces and newlines, digits that are not 0-9, and special tokens inside the text.
ODD_TEXTS = [
    "",
    "Café — naïve 東京, ½ price² 🙂 e\u0301",
    "<|user|>\nIt's late, I'LL wait<|eos|><|eos|>",
    "tab\there  two  spaces \n\n  trailing   ",
    "\x00\x1f\x7f bytes and 3.14e-5 or 1,000",
    "<|eos<|eos|>|>",
]


@pytest.fixture(scope="module")
def trained():
    """Both twins trained on the course's corpus, with their training times (seconds)."""
    texts = tokenizer_corpus()
    tokenizers, seconds = {}, {}
    for twin in TWINS:
        start = time.perf_counter()
        tokenizers[twin] = twin.train_bpe(texts)
        seconds[twin.__name__] = time.perf_counter() - start
    return tokenizers, seconds


def test_byte_table_and_word_split_match_the_library():
    assert naive.bytes_to_unicode() == library.bytes_to_unicode()
    assert sorted(naive.bytes_to_unicode().values()) == sorted(
        library.pre_tokenizers.ByteLevel.alphabet()
    )
    for text in ODD_TEXTS + tokenizer_corpus()[:200]:
        assert naive.pre_tokenize(text) == library.pre_tokenize(text), text


def test_same_merges_same_ids_on_the_course_corpus(trained, record_property):
    tokenizers, seconds = trained
    merges = naive.get_merges(tokenizers[naive])
    assert merges == library.get_merges(tokenizers[library])
    assert naive.get_vocab(tokenizers[naive]) == library.get_vocab(tokenizers[library])
    # The corpus runs out of pairs before 2,048 tokens: 5 special + 256 bytes + every merge.
    assert len(merges) == len(naive.get_vocab(tokenizers[naive])) - len(SPECIAL_TOKENS) - 256
    for name, value in seconds.items():
        record_property(f"train_seconds_{name}", round(value, 2))


def test_library_twin_reproduces_the_shipped_tokenizer(trained):
    tokenizers, _ = trained
    shipped = json.loads((TINY_MODEL_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert library.get_vocab(tokenizers[library]) == {
        **shipped["model"]["vocab"],
        **{token["content"]: token["id"] for token in shipped["added_tokens"]},
    }
    assert library.get_merges(tokenizers[library]) == [tuple(m) for m in shipped["model"]["merges"]]


def test_same_ids_on_held_out_and_odd_texts(trained):
    tokenizers, _ = trained
    texts = HELDOUT_TEXT.read_text(encoding="utf-8").splitlines()[:300] + ODD_TEXTS
    for text in texts:
        assert naive.encode(tokenizers[naive], text) == library.encode(tokenizers[library], text)
    # Held-out text compresses (merges are used), so the comparison is not only of bytes.
    words = " ".join(texts[:300])
    assert len(naive.encode(tokenizers[naive], words)) < len(words.encode("utf-8")) / 3


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__.split(".")[-1])
def test_decode_gives_back_the_exact_text(trained, twin):
    tokenizer = trained[0][twin]
    for text in ODD_TEXTS:
        assert twin.decode(tokenizer, twin.encode(tokenizer, text)) == text


def test_a_wrong_tie_break_is_caught(monkeypatch):
    """Ties are frequent in this corpus: breaking them towards the largest ids instead of the
    smallest learns other merges, and the parity comparison sees it."""
    texts = tokenizer_corpus()[:2000]
    expected = library.get_merges(library.train_bpe(texts))
    assert naive.get_merges(naive.train_bpe(texts)) == expected
    monkeypatch.setattr(
        naive, "best_pair", lambda counts: max(counts, key=lambda p: (counts[p], p[0], p[1]))
    )
    assert naive.get_merges(naive.train_bpe(texts)) != expected


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__.split(".")[-1])
def test_texts_may_be_a_stream(twin):
    """A generator is read once, text by text, and teaches what the list teaches."""
    texts = tokenizer_corpus()[:300]
    expected = twin.get_merges(twin.train_bpe(texts, vocab_size=400))
    assert len(expected) == 400 - len(SPECIAL_TOKENS) - 256
    assert twin.get_merges(twin.train_bpe((t for t in texts), vocab_size=400)) == expected


def test_a_tie_goes_to_the_smallest_ids_and_overlaps_count():
    """ "aaa" holds the pair (a, a) twice, so it outnumbers (b, c) 2 to 1 and goes first;
    after it, (b, c) and (a, b) tie at 1 and the pair of smaller ids, (a, b), wins."""
    for twin in TWINS:
        tokenizer = twin.train_bpe(["aaa", "bc", "ab"], vocab_size=259, special_tokens=[])
        assert twin.get_merges(tokenizer) == [("a", "a"), ("a", "b"), ("b", "c")]
        assert twin.encode(tokenizer, "aaab") == [256 + 0, 256 + 1]  # "aa", "ab"


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__.split(".")[-1])
def test_bad_input_names_the_argument(twin):
    with pytest.raises(TypeError, match="texts must be an iterable"):
        twin.train_bpe("one text, not a list")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        twin.train_bpe(["fine", 3])
    with pytest.raises(ValueError, match="vocab_size"):
        twin.train_bpe(["fine"], vocab_size=100)
    with pytest.raises(ValueError, match="special_tokens holds a token twice"):
        twin.train_bpe(["fine"], special_tokens=["<|eos|>", "<|eos|>"])
    with pytest.raises(ValueError, match=r"special_tokens\[0\]"):
        twin.train_bpe(["fine"], special_tokens=[""])
    tokenizer = twin.train_bpe(["fine"])
    with pytest.raises(TypeError, match="text must be a str"):
        twin.encode(tokenizer, b"bytes")
    with pytest.raises(ValueError, match=r"ids\[1\] = 5000 is outside"):
        twin.decode(tokenizer, [0, 5000])
    with pytest.raises(TypeError, match="tokenizer must be"):
        twin.encode(object(), "text")
