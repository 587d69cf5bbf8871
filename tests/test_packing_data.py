"""Chapter 09's packing data: made by its script, byte for byte, and spread as stated."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.paths import DATA_DIR


def test_script_writes_the_shipped_bytes(tmp_path):
    subprocess.run(
        [sys.executable, str(DATA_DIR / "make_packing_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    shipped = (DATA_DIR / "packing" / "train.jsonl").read_bytes()
    assert (tmp_path / "packing" / "train.jsonl").read_bytes() == shipped


def test_lengths_spread_as_the_data_card_says():
    records = [json.loads(line) for line in (DATA_DIR / "packing" / "train.jsonl").open()]
    words = sorted(len((r["prompt"] + " " + r["completion"]).split()) for r in records)
    assert len(records) == 256 and (words[0], words[-1], words[len(words) // 2]) == (17, 160, 47)
    p10, p90 = words[len(words) // 10], words[9 * len(words) // 10]
    assert p90 / p10 > 4  # Alpaca's sample: 94 / 17 = 5.5; the course task: under 2
    for r in records:
        n_reviews = r["prompt"].count("\n")
        assert len(json.loads(r["completion"])) == n_reviews >= 1
