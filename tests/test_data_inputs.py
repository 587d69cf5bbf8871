"""Records as ``helpers.data.encode`` and the SFT twins take them: bad settings and empty answers
refused alike, and a long record tokenized only near the tokens that are kept."""

from __future__ import annotations

import json
import random
import time

import pytest

from helpers import data
from helpers.sft import SFTRun
from helpers.sft import library as sft_library
from helpers.sft import naive as sft_naive


def _reference_encode(tokenizer, record: dict, max_seq_len: int) -> dict:
    """The rule ``encode`` keeps, written the slow way: tokenize every segment whole, then cut
    (the last answer's start if it alone fills the window, else the sequence's end)."""
    ids, labels = [], []
    for context, answer in data._segments(tokenizer, record):
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        ids += context_ids + answer_ids
        labels += [data.IGNORE_INDEX] * len(context_ids) + answer_ids
    if len(answer_ids) >= max_seq_len:
        start = len(ids) - len(answer_ids)
        return {"input_ids": ids[start : start + max_seq_len], "labels": answer_ids[:max_seq_len]}
    return {"input_ids": ids[-max_seq_len:], "labels": labels[-max_seq_len:]}


class _Spy:
    """A tokenizer that counts the characters it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer, self.chars = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.chars += len(text) if isinstance(text, str) else sum(map(len, text))
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _words(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = "the box arrived late again and was damaged refund please 42 euros, thanks!".split()
    out, size = [], 0
    while size < n_chars:
        word = rng.choice(vocab)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


@pytest.mark.parametrize("max_seq_len", [8, 32, 128])
def test_encode_keeps_todays_tokens_on_the_task(tiny_tokenizer, max_seq_len):
    for record in data.load_task("train").select(range(200)):
        assert data.encode(tiny_tokenizer, record, max_seq_len) == _reference_encode(
            tiny_tokenizer, record, max_seq_len
        )


@pytest.mark.parametrize("max_seq_len", [16, 128, 512])
def test_encode_keeps_todays_tokens_on_long_records(tiny_tokenizer, max_seq_len):
    long = _words(60_000)
    records = [
        {"prompt": long, "completion": '{"category": "delivery"}'},
        {"prompt": "Tag this review.", "completion": long},
        {
            "messages": [
                {"role": "user", "content": long},
                {"role": "assistant", "content": "ok " + long[:500]},
                {"role": "user", "content": "and now?"},
                {"role": "assistant", "content": '{"category": "refund"}'},
            ]
        },
    ]
    for record in records:
        got = data.encode(tiny_tokenizer, record, max_seq_len)
        assert got == _reference_encode(tiny_tokenizer, record, max_seq_len)
        assert len(got["input_ids"]) == len(got["labels"]) == max_seq_len


@pytest.mark.parametrize("where", ["prompt", "completion", "no spaces"])
def test_a_huge_record_costs_what_its_kept_tokens_cost(tiny_tokenizer, where):
    # Before: the whole text was tokenized, then 128 tokens kept (60 MiB: 94 s and 9.4 GiB).
    big = "x" * 4 * 2**20 if where == "no spaces" else _words(4 * 2**20)
    record = {"prompt": big, "completion": '{"category": "delivery"}'}
    if where == "completion":
        record = {"prompt": "Tag this review.", "completion": big}
    spy = _Spy(tiny_tokenizer)
    start = time.perf_counter()
    encoded = data.encode(spy, record, 128)
    seconds = time.perf_counter() - start
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == 128
    assert spy.chars < 64 * 1024, spy.chars  # characters tokenized: a window, not 4 MiB
    assert seconds < 2.0, seconds  # measured 0.03 s; tokenizing the whole 4 MiB took 13 s


def test_trl_texts_are_cut_to_what_trl_keeps(tiny_tokenizer):
    # TRL tokenizes the whole prompt and completion, then keeps max_length tokens from the start
    long = _words(200_000, seed=1)
    example = {"prompt": long, "completion": long[:50_000]}
    cut = sft_library._bounded(tiny_tokenizer, example, 128)
    for key in ("prompt", "completion"):
        assert len(cut[key]) < 16_000
        whole = tiny_tokenizer(example[key], add_special_tokens=False)["input_ids"]
        head = tiny_tokenizer(cut[key], add_special_tokens=False)["input_ids"]
        assert head[:144] == whole[:144]  # 128 tokens and the 16 after them
    short = {"prompt": "Tag this.", "completion": "{}"}
    assert sft_library._bounded(tiny_tokenizer, short, 128) == short


@pytest.mark.parametrize("max_seq_len", [0, -3, 2.5])
def test_max_seq_len_below_one_is_refused(tiny_tokenizer, max_seq_len):
    # max_seq_len=0 used to return empty token lists, and a batch of empty tensors
    record = {"prompt": "Tag this.", "completion": '{"category": "delivery"}'}
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer"):
        data.encode(tiny_tokenizer, record, max_seq_len)
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer"):
        data.Collator(tiny_tokenizer, max_seq_len)


def _chat(answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Tag this."},
            {"role": "assistant", "content": answer},
        ]
    }


@pytest.mark.parametrize("answer", ["", "  \n"])
def test_an_empty_assistant_turn_is_refused_like_an_empty_completion(
    tmp_path, tiny_tokenizer, answer
):
    # it used to train on the eos token alone, while an empty completion was refused
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(_chat("fine")) + "\n" + json.dumps(_chat(answer)) + "\n")
    with pytest.raises(
        ValueError, match=rf"{path}, line 2: messages\[1\]: an assistant turn's 'content' is empty"
    ):
        data.load_jsonl(path)
    path.write_text(json.dumps({"prompt": "Tag this.", "completion": answer}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}, line 1: field 'completion' is empty"):
        data.load_jsonl(path)
    run = SFTRun(
        max_steps=1,
        micro_batch_size=1,
        grad_accum_steps=1,
        lr=1e-3,
        max_seq_len=64,
        r=2,
        alpha=4,
        target_modules=("q_proj",),
    )
    for record in (_chat(answer), {"prompt": "Tag this.", "completion": answer}):
        with pytest.raises(ValueError, match="is empty: nothing to learn"):
            sft_naive.encode_records(tiny_tokenizer, [record], run)  # the course loop's twin
        with pytest.raises(ValueError, match="is empty: nothing to learn"):
            sft_library.to_prompt_completion(tiny_tokenizer, record)  # TRL's twin


def test_train_refuses_a_micro_batch_larger_than_the_dataset(tiny_tokenizer):
    # the loop drew batches forever: no micro-batch could ever be filled
    from torch import nn

    from helpers.train import train

    model = nn.Linear(2, 2)
    records = [{"prompt": "a", "completion": "b"}]
    with pytest.raises(ValueError, match="holds 1 records, fewer than micro_batch_size=4"):
        train(model, tiny_tokenizer, records, max_steps=1, micro_batch_size=4, lr=1e-3)
    with pytest.raises(ValueError, match="grad_accum_steps must be a positive integer"):
        train(
            model,
            tiny_tokenizer,
            records,
            max_steps=1,
            micro_batch_size=1,
            lr=1e-3,
            grad_accum_steps=0,
        )
