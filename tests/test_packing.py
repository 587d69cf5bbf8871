"""Packed rows keep their examples apart: the packed loss equals the sum over the examples run
alone (relative 1e-5, fp32 reordering), by hand (4D mask) and with TRL (padding-free); an
all-ones 2D mask or a KV cache lets them see each other, and the check catches it."""

from __future__ import annotations

import pytest
import torch

from helpers.data import IGNORE_INDEX, load_task
from helpers.models import load_model
from helpers.packing import alone_loss_sum, loss_sum, padding_fraction
from helpers.packing import library as pack_library
from helpers.packing import naive as pack_naive
from helpers.sft import SFTRun
from helpers.sft.naive import encode_records

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def setup(tiny_profile):
    model, tokenizer = load_model(tiny_profile)
    run = SFTRun.from_profile(tiny_profile)
    encoded = encode_records(tokenizer, list(load_task("train").select(range(12))), run)
    with torch.no_grad():
        reference = alone_loss_sum(model, encoded)
    return model, tokenizer, encoded, reference


@pytest.mark.parametrize("twin", [pack_naive, pack_library])
def test_packed_loss_equals_examples_alone(setup, twin):
    model, tokenizer, encoded, reference = setup
    rows = twin.pack(encoded, 300)
    assert len(rows) < len(encoded)  # several examples share a row
    with torch.no_grad():
        packed = sum(loss_sum(model, twin.collate([row], tokenizer.pad_token_id)) for row in rows)
    assert abs(packed - reference) / reference < TOLERANCE


def test_a_2d_mask_or_a_cache_leaks_across_examples(setup):
    model, tokenizer, encoded, _ = setup
    row = pack_library.pack(encoded[:4], 300)[0]
    batch = pack_library.collate([row], tokenizer.pad_token_id)
    n = len(row["seq_lengths"])
    with torch.no_grad():
        alone = alone_loss_sum(model, encoded[:n])
        leaky = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))
        assert abs(loss_sum(model, leaky) - alone) / alone > 1e-2
        assert abs(loss_sum(model, batch, use_cache=True) - alone) / alone > 1e-2


def test_naive_rows_restart_positions_and_mask_first_labels(setup):
    _, tokenizer, encoded, _ = setup
    rows = pack_naive.pack(encoded[:3], 1000)
    assert len(rows) == 1 and rows[0]["seq_lengths"] == [len(e["input_ids"]) for e in encoded[:3]]
    starts = [0, *torch.tensor(rows[0]["seq_lengths"]).cumsum(0)[:-1].tolist()]
    assert all(rows[0]["position_ids"][s] == 0 for s in starts)
    assert all(rows[0]["labels"][s] == IGNORE_INDEX for s in starts)
    mask = pack_naive.block_causal_mask([[2, 1]], 4)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="example 0 has"):
        pack_naive.pack(encoded[:1], 5)


def test_padding_fraction():
    assert padding_fraction([[3, 1], [2]]) == pytest.approx(2 / 8)
    assert padding_fraction([[5]]) == 0.0
    with pytest.raises(ValueError, match="no rows"):
        padding_fraction([[]])
