"""Pretraining twins: the same blocks from both streams, the same schedule, the same losses.

The naive twin streams text files in plain Python and writes its loss and schedule by hand;
the library twin streams through ``datasets`` and takes transformers' loss and schedule. A
naive Llama trained by the naive loop and transformers' Llama trained by the library loop,
from one set of weights on one stream, follow the same loss curve.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig

from helpers.llama import library as llama_library
from helpers.llama import naive as llama_naive
from helpers.paths import HELDOUT_TEXT, TINY_MODEL_DIR
from helpers.pretrain import library, naive

TWINS = pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def blocks_of(twin, tokenizer, **settings) -> list[list[int]]:
    return [row["input_ids"] for row in twin.stream_blocks(HELDOUT_TEXT, tokenizer, **settings)]


@pytest.mark.parametrize(
    "settings",
    [
        dict(block_size=64, docs_per_group=100),
        dict(block_size=48, docs_per_group=7, min_chars=60),
        dict(block_size=128),
    ],
)
def test_same_blocks_from_both_streams(tokenizer, settings):
    got = blocks_of(naive, tokenizer, **settings)
    assert got == blocks_of(library, tokenizer, **settings)
    assert got and all(len(block) == settings["block_size"] for block in got)
    # Every kept document ends with eos; the blocks hold the documents' tokens in file order.
    lines = HELDOUT_TEXT.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if len(line.strip()) >= settings.get("min_chars", 1)]
    first = tokenizer(kept[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    flat = list(itertools.chain.from_iterable(got))
    assert flat[: len(first)] == first[: len(flat)]
    assert flat.count(tokenizer.eos_token_id) <= len(kept)


@pytest.mark.parametrize("warmup_steps, max_steps", [(0, 10), (3, 10), (10, 10), (5, 37)])
def test_same_learning_rate_schedule(warmup_steps, max_steps):
    rates = {}
    for twin in (naive, library):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        schedule = twin.lr_schedule(opt, warmup_steps, max_steps)
        rates[twin] = []
        for _ in range(max_steps + 1):
            rates[twin].append(schedule.get_last_lr()[0])
            opt.step()
            schedule.step()
    assert rates[naive] == pytest.approx(rates[library], rel=1e-12, abs=1e-15)
    assert max(rates[naive]) == pytest.approx(0.5)  # the peak is the optimizer's lr
    if warmup_steps < max_steps:  # and it decays to 0 by the last step
        assert rates[naive][-1] == pytest.approx(0.0, abs=1e-15)


def small_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )


def test_naive_and_library_pretraining_follow_the_same_curve(tokenizer):
    """Naive Llama + naive loop vs transformers' Llama + library loop, one init, one stream:
    the losses and held-out perplexities agree to 1e-4 (float sums in another order, grown
    over 8 optimizer steps); and the model learns (perplexity falls)."""
    rows = list(library.stream_blocks(HELDOUT_TEXT, tokenizer, block_size=32))
    train, heldout = rows[:64], rows[-16:]
    torch.manual_seed(0)
    lib_model = llama_library.build_llama(small_config(len(tokenizer)))
    naive_model = llama_naive.build_llama(lib_model.config, lib_model.state_dict())
    settings = dict(max_steps=8, micro_batch_size=4, lr=3e-3, warmup_steps=2, eval_every=4)
    got = naive.pretrain(naive_model, train, heldout=heldout, progress=False, **settings)
    expected = library.pretrain(lib_model, train, heldout=heldout, progress=False, **settings)
    assert got["val_step"] == expected["val_step"] == [4, 8]
    assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert got["val_ppl"] == pytest.approx(expected["val_ppl"], rel=1e-4)
    assert got["val_ppl"][-1] < got["val_ppl"][0] < len(tokenizer)


@TWINS
def test_bad_input_names_the_argument(twin, tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"paths\[1\]"):
        twin.stream_blocks([HELDOUT_TEXT, tmp_path / "none.txt"], tokenizer, 64)
    with pytest.raises(ValueError, match="block_size"):
        twin.stream_blocks(HELDOUT_TEXT, tokenizer, 1)
    with pytest.raises(ValueError, match="tokenizer must be a transformers tokenizer"):
        twin.stream_blocks(HELDOUT_TEXT, None, 64)
    model = llama_library.build_llama(small_config(len(tokenizer)))
    rows = list(twin.stream_blocks(HELDOUT_TEXT, tokenizer, 32))[:8]
    with pytest.raises(ValueError, match="warmup_steps"):
        twin.pretrain(model, rows, max_steps=2, micro_batch_size=2, lr=1e-3, warmup_steps=3)
    with pytest.raises(ValueError, match="micro_batch_size=16"):
        twin.pretrain(model, rows, max_steps=2, micro_batch_size=16, lr=1e-3, progress=False)
    one_shot = iter(rows)
    with pytest.raises(ValueError, match="one-shot iterator"):
        twin.pretrain(model, one_shot, max_steps=5, micro_batch_size=4, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="heldout must be a non-empty list"):
        twin.pretrain(model, rows, max_steps=2, micro_batch_size=2, lr=1e-3, heldout=[])
    with pytest.raises(ValueError, match="blocks: every block must hold the same number"):
        twin.perplexity(model, [[1, 2, 3], [1, 2]])


def test_jsonl_documents_keep_their_line_breaks_in_both_twins(tokenizer, tmp_path):
    """A ``.jsonl`` file streams the ``"text"`` of each line, line breaks included (a rendered
    chat), the same in both twins; the blocks are those of the documents' concatenation."""
    import json

    docs = ["<|user|>\nWhich product?\n<|assistant|>\nthe kettle", "plain line", "a\nb\nc " * 20]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    expected = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        expected += ids + [tokenizer.eos_token_id]
    expected = [expected[i : i + 8] for i in range(0, len(expected) - 7, 8)]
    for twin in (naive, library):
        got = [row["input_ids"] for row in twin.stream_blocks(path, tokenizer, 8)]
        assert got == expected, twin.__name__


@TWINS
def test_bad_jsonl_names_file_and_line_and_mixed_kinds_are_refused(twin, tokenizer, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("one document\n")
    good = tmp_path / "b.jsonl"
    good.write_text('{"text": "one document"}\n')
    with pytest.raises(ValueError, match="mixes .jsonl and plain text"):
        twin.stream_blocks([text, good], tokenizer, 4)
    if twin is naive:  # datasets raises its own error for a malformed line
        bad = tmp_path / "c.jsonl"
        bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
        with pytest.raises(ValueError, match=r"c\.jsonl, line 2: expected a JSON object"):
            list(twin.stream_blocks(bad, tokenizer, 4))


@TWINS
def test_stop_after_replays_the_start_of_a_longer_run(twin, tokenizer):
    rows = list(twin.stream_blocks(HELDOUT_TEXT, tokenizer, 32))[:16]
    runs = {}
    for stop in (None, 3):
        torch.manual_seed(0)
        model = llama_library.build_llama(small_config(len(tokenizer)))
        runs[stop] = twin.pretrain(
            model, rows, max_steps=6, micro_batch_size=2, lr=1e-3, warmup_steps=2,
            progress=False, stop_after=stop,
        )  # fmt: skip
    assert len(runs[3]["loss"]) == 3
    assert runs[3]["loss"] == runs[None]["loss"][:3]
    assert runs[3]["lr"] == runs[None]["lr"][:3]  # the 6-step schedule, not a 3-step one
    with pytest.raises(ValueError, match="stop_after"):
        twin.pretrain(model, rows, max_steps=6, micro_batch_size=2, lr=1e-3, stop_after=7)
