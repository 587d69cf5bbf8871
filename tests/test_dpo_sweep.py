"""Chapter 10's DPO sweep (helpers.dpo.sweep): the balanced pairs, and the stored file that the
chapter prints (data/results/dpo_sweep.json) against what it claims to hold."""

from __future__ import annotations

import collections
import json

import pytest
from scipy.stats import binomtest

from helpers.dpo import sweep
from helpers.task import FIELDS, parse_answer


def _net(pairs):
    """For each (field, label): times chosen minus times rejected, where the pair differs."""
    net = collections.Counter()
    for pair in pairs:
        chosen, rejected = parse_answer(pair["chosen"]), parse_answer(pair["rejected"]) or {}
        for field in FIELDS:
            if chosen[field] != rejected.get(field):
                net[(field, chosen[field])] += 1
                net[(field, rejected.get(field))] -= 1
    return net


def _record(category, sentiment, urgency, prompt="a review"):
    answer = {"category": category, "sentiment": sentiment, "urgency": urgency}
    return {"prompt": prompt, "completion": json.dumps(answer)}


RECORDS = [
    _record("returns", "negative", "high"),
    _record("delivery", "positive", "low"),
    _record("quality", "neutral", "low"),
]


def _pair(record, **wrong):
    gold = parse_answer(record["completion"])
    return {**record, "chosen": record["completion"], "rejected": json.dumps({**gold, **wrong})}


def test_balanced_pairs_choose_every_label_as_often_as_they_reject_it():
    # Three pairs that all reject urgency "low": the label is pushed down three times over.
    pairs = [_pair(RECORDS[0], urgency="low")] * 3 + [_pair(RECORDS[1], sentiment="negative")]
    assert _net(pairs)[("urgency", "high")] == 3
    balanced = sweep.balance_pairs(pairs, RECORDS, seed=0)
    assert balanced[: len(pairs)] == pairs  # the originals first, unchanged
    net = _net(balanced)
    for field in FIELDS:
        counts = [v for (f, label), v in net.items() if f == field and label is not None]
        assert not counts or max(counts) - min(counts) <= 1, (field, net)
    # urgency +3 high / -3 low takes three pairs to even; sentiment +1 positive / -1 negative one.
    assert len(balanced) - len(pairs) == 3 + 1
    assert net[("urgency", "low")] == net[("urgency", "high")] == 0


def test_balanced_pairs_refuse_a_label_no_record_can_choose():
    records = [_record("returns", "negative", "high")]
    pairs = [_pair(records[0], urgency="low")] * 2
    with pytest.raises(ValueError, match="no record has the urgency 'low' to choose"):
        sweep.balance_pairs(pairs, records)


def test_the_stored_sweep_holds_every_setting_and_its_tests_recompute():
    doc = json.loads(sweep.SWEEP_FILE.read_text())
    assert [r["setting"]["name"] for r in doc["runs"]] == [s.name for s in sweep.SETTINGS]
    for row, setting in zip(doc["runs"], sweep.SETTINGS, strict=True):
        assert row["setting"] == {**setting.__dict__}
        assert sum(row["urgency_predicted"].values()) == 200
        for key, field in row["fields"].items():
            n = field["dpo_only"] + field["sft_only"]
            p = binomtest(field["dpo_only"], n, 0.5).pvalue if n else 1.0
            assert field["p_value"] == pytest.approx(min(p, 1.0), rel=1e-3), (row, key)
            assert field["low"] <= field["rate"] <= field["high"]
            # The rate moves from SFT's by the discordant pairs: (dpo_only - sft_only) / 200.
            gap = (field["dpo_only"] - field["sft_only"]) / 200
            assert field["rate"] == pytest.approx(doc["sft"][key] + gap, abs=1e-9), (row, key)
