"""The memory guard against the GPU: the 2026-12-04 measurement of chapters 01 to 05 at course
commit 9a73c0f (``data/gpu/measured-2026-12-04.json``) replayed against the guard's tiny-run
record of the same commit (``tests/data/memguard-tiny-9a73c0f.json``, written by the chapters on
the tiny profile with ``COURSE_MEMGUARD`` set).

A prediction must flag the four runs that fail on the real cards (gpu-4gb 01, 03, 05 and t4-8b
03, against today's budgets) and land within 15 % of every measured peak that fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.memory import GIB
from helpers.paths import DATA_DIR
from tools import memory_guard
from tools.gpucheck import measured as gpu

TINY = Path(__file__).parent / "data" / "memguard-tiny-9a73c0f.json"
MEASURED = DATA_DIR / "gpu" / "measured-2026-12-04.json"
# The same measurement in data/gpu/measured.json's schema (that file now holds later runs).
MEASURED_9A73C0F = Path(__file__).parent / "data" / "measured-9a73c0f.json"
FAILS = {("gpu-4gb", "01"), ("gpu-4gb", "03"), ("gpu-4gb", "05"), ("t4-8b", "03")}
TOLERANCE = 0.15


def measured_runs() -> dict[tuple[str, str], dict]:
    doc = json.loads(MEASURED.read_text())
    return {(r["profile"], r["chapter"]): r for r in doc["runs"] if r["chapter"] != "00"}


def predictions() -> dict[tuple[str, str], memory_guard.Row]:
    rows = memory_guard.predict_rows(json.loads(TINY.read_text()))
    return {(r.profile, r.chapter[:2]): r for r in rows}


def test_the_replayed_failures_are_those_of_the_real_budgets():
    runs = measured_runs()
    over = {
        key
        for key, run in runs.items()
        if run["status"] != "ok" or run["peak_reserved_gib"] > memory_guard.CARD_GIB[key[0]]
    }
    assert over == FAILS


def _misses() -> list[str]:
    rows, misses = predictions(), []
    for key, run in sorted(measured_runs().items()):
        row = rows[key]
        if key in FAILS:
            if row.peak_bytes is None or row.peak_bytes <= row.card_bytes:
                misses.append(f"{key}: predicted fits ({row.verdict}), fails on the GPU")
            continue
        predicted = (row.peak_bytes or 0) / GIB
        error = predicted / run["peak_reserved_gib"] - 1
        if abs(error) > TOLERANCE:
            misses.append(f"{key}: predicted {predicted:.2f}, measured "
                          f"{run['peak_reserved_gib']:.2f} GiB ({error:+.0%})")  # fmt: skip
    return misses


@pytest.mark.xfail(
    strict=True,
    reason="not calibrated yet: the tiny-run record sees what is alive at the end of each cell, "
    "not a cell's transients (fp32 logits over the vocabulary, a second weight copy inside "
    "measure.swapped_weights, the few-shot cell's activations); see the misses this prints",
)
def test_the_guard_predicts_the_measured_table():
    misses = _misses()
    assert not misses, "\n".join(misses)


def test_measured_verdicts_outrank_predictions_and_say_so():
    doc = json.loads(MEASURED_9A73C0F.read_text())
    rows = memory_guard.evaluate(json.loads(TINY.read_text()), measured=doc)
    by_key = {(r.profile, r.chapter[:2]): r for r in rows}
    for key in FAILS:
        if by_key[key].measured is None:  # the chapter changed since 9a73c0f: planned again
            continue
        assert not by_key[key].ok and "measured on NVIDIA H200, 2026-12-04" in by_key[key].verdict
    assert by_key[("t4x2", "02")].verdict.endswith("(planned)")


def test_a_measurement_of_a_changed_chapter_does_not_hold(monkeypatch):
    doc = json.loads(MEASURED_9A73C0F.read_text())
    monkeypatch.setattr(gpu, "_unchanged", lambda commit, notebook: False)
    assert gpu.lookup("t4", "01_quantization", doc) is None
    monkeypatch.setattr(gpu, "_unchanged", lambda commit, notebook: True)
    assert gpu.lookup("t4", "01_quantization", doc)["peak_reserved_gib"] == 8.264
