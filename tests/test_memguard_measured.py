"""The memory guard against the GPU: the 2026-12-04 measurement of chapters 01 to 05 at course
commit 9a73c0f (``data/gpu/measured-2026-12-04.json``) replayed against the guard's tiny-run
record of the same commit (``tests/data/memguard-tiny-9a73c0f.json``).

The record was made by running 9a73c0f's chapters (``git worktree add <dir> 9a73c0f``) with
papermill on the tiny profile, ``COURSE_MEMGUARD`` set and this branch's ``helpers/memguard.py``
(and ``helpers/hardware.py``, which it imports) copied into that worktree, with the short-run
parameters of the GPU measurement (``../shared/gpu/run_chapters.py``: e.g. chapter 05 with
``USE_SAVED_ADAPTERS=False``, so it trains its own adapters as the GPU run did).

A prediction must flag the four runs that fail on the real cards (gpu-4gb 01, 03, 05 and t4-8b
03, against today's budgets) and land within 15 % of every measured peak that fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import memguard
from helpers.gpucheck import measured as gpu
from helpers.memory import GIB
from helpers.paths import DATA_DIR
from helpers.profiles import PROFILES

TINY = Path(__file__).parent / "data" / "memguard-tiny-9a73c0f.json"
MEASURED = DATA_DIR / "gpu" / "measured-2026-12-04.json"
# The same measurement in data/gpu/measured.json's schema (that file now holds later runs).
MEASURED_9A73C0F = Path(__file__).parent / "data" / "measured-9a73c0f.json"
FAILS = {("gpu-4gb", "01"), ("gpu-4gb", "03"), ("gpu-4gb", "05"), ("t4-8b", "03")}
TOLERANCE = 0.15
# Fitting runs the model still misses by more than TOLERANCE, with the numbers (test below).
KNOWN_MISSES = {
    ("gpu-4gb", "04"): "predicted 2.70, measured 1.85 GiB (+46 %): in the cell that compares "
    "accumulated gradients with one full batch, the tiny run's full batch is 16 records "
    "(micro-batch 8 // 2 x 4) and the GPU's 4 (2 // 2 x 4); the model scales a forward's "
    "positions by the window, not by the profile's micro-batch (doing so for every training "
    "cell breaks t4 04 and 02)",
}


def measured_runs() -> dict[tuple[str, str], dict]:
    doc = json.loads(MEASURED.read_text())
    return {(r["profile"], r["chapter"]): r for r in doc["runs"] if r["chapter"] != "00"}


def recorded() -> dict:
    """The tiny-run record with the skips of 9a73c0f's time lifted for chapter 03 on t4-8b:
    the GPU did run it there (the QLoRA-only path), and the guard predicts it from the tiny
    run, which takes both paths: an upper bound on that run's peak (see the test below)."""
    data = json.loads(TINY.read_text())
    data["03_qlora"]["unsupported"].pop("t4-8b", None)
    return data


def predictions() -> dict[tuple[str, str], memguard.Row]:
    skips = {c: dict(v) for c, v in memguard.UNSUPPORTED.items()}
    skips["03_qlora"].pop("t4-8b", None)
    rows = memguard.predict_rows(recorded(), unsupported=skips)
    return {(r.profile, r.chapter[:2]): r for r in rows}


def test_the_replayed_failures_are_those_of_the_real_budgets():
    runs = measured_runs()
    over = {
        key
        for key, run in runs.items()
        if run["status"] != "ok" or run["peak_reserved_gib"] > memguard.CARD_GIB[key[0]]
    }
    assert over == FAILS


def replay() -> tuple[list[str], list[str]]:
    """(lines: prediction vs measurement of every run, misses: those that break the rule)."""
    rows, lines, misses = predictions(), [], []
    for key, run in sorted(measured_runs().items()):
        row = rows[key]
        predicted = (row.peak_bytes or 0) / GIB
        error = predicted / run["peak_reserved_gib"] - 1
        line = (f"{key[0]:8s} {key[1]}: predicted {predicted:5.2f}, measured "
                f"{run['peak_reserved_gib']:5.2f} GiB ({error:+.0%}, {run['status'][:20]})")  # fmt: skip
        lines.append(line)
        if key in FAILS:
            if row.peak_bytes is None or row.peak_bytes <= row.card_bytes:
                misses.append(f"{line}: predicted fits ({row.verdict}), fails on the GPU")
        elif abs(error) > TOLERANCE:
            misses.append(f"{key}: {line}")
    return lines, misses


def test_the_guard_predicts_the_measured_table():
    lines, misses = replay()
    print("\n".join(lines))
    unexpected = [m for m in misses if not any(m.startswith(str(k)) for k in KNOWN_MISSES)]
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.xfail(strict=True, reason="; ".join(f"{k}: {v}" for k, v in KNOWN_MISSES.items()))
def test_the_known_misses_are_within_tolerance():
    misses = replay()[1]
    assert not [m for m in misses if any(m.startswith(str(k)) for k in KNOWN_MISSES)]


def test_the_cells_both_paths_share_on_t4_8b_are_predicted():
    """Chapter 03 on t4-8b: the tiny run's path is the longer one, so its peak is an upper
    bound; the cells both paths run (the two 4-bit twins loaded, then compared on fresh
    tokens) are predicted within 15 % of the GPU's peak after them."""
    data = recorded()["03_qlora"]["cells"]
    profile = PROFILES["t4-8b"]
    shape = memguard.profile_shape(profile)
    rises = {
        next(ln for ln in r["cell_starts"].splitlines() if not ln.startswith("#"))[:20]: r[
            "peak_reserved_gib"
        ]
        for r in measured_runs()[("t4-8b", "03")]["peak_rises"]
    }
    compared = [c for c in data if c["label"].startswith("device = next(naive_4bit")][0]
    upto = [c for c in data if c["cell"] <= compared["cell"]]
    predicted = max(memguard.predict(c, profile, shape) for c in upto) / GIB
    measured = rises["device = next(naive_"]
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (predicted, measured)


def test_measured_verdicts_outrank_predictions_and_say_so():
    doc = json.loads(MEASURED_9A73C0F.read_text())
    rows = memguard.evaluate(json.loads(TINY.read_text()), measured=doc)
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


def _check(tmp_path, monkeypatch, capsys, measured_run: dict | None, cells: float) -> int:
    """``check`` on one synthetic chapter (``cells`` unquantized copies) with ``measured_run``
    as the GPU's verdict on gpu-4gb (still holding)."""
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))
    cell = {"cell": 1, "label": "x", "linear": cells, "embedding": cells, "linear_4bit": 0.0}
    data = {"02_lora": {"unsupported": {}, "cells": [cell | {"graph": False}]}}
    memguard._save(tmp_path / "g.json", data)
    doc = {"gpu": "G", "date": "D", "commit": "c", "runs": [measured_run] if measured_run else []}
    monkeypatch.setattr(gpu, "MEASURED", tmp_path / "measured.json")
    (tmp_path / "measured.json").write_text(json.dumps(doc))
    monkeypatch.setattr(gpu, "_unchanged", lambda commit, notebook: True)
    only = {name: PROFILES[name] for name in ("tiny", "gpu-4gb")}
    monkeypatch.setattr("helpers.profiles.PROFILES", only)
    return memguard.main(["check", str(tmp_path / "g.json")])


def test_check_reports_a_measured_failure_but_fails_only_on_planned_overflow(
    tmp_path, monkeypatch, capsys
):
    failed = {"chapter": "02", "profile": "gpu-4gb", "status": "failed: OutOfMemoryError",
              "peak_reserved_gib": 3.9}  # fmt: skip
    # a planned fit, a measured failure: loud, not failing
    assert _check(tmp_path, monkeypatch, capsys, failed, cells=0.1) == 0
    assert "FAILED ON A GPU" in capsys.readouterr().err
    # a planned overflow fails, with or without a measurement
    assert _check(tmp_path, monkeypatch, capsys, failed, cells=4.0) == 1
    assert _check(tmp_path, monkeypatch, capsys, None, cells=4.0) == 1
    # a measured fit clears a planned overflow
    fits = failed | {"status": "ok", "peak_reserved_gib": 2.0}
    assert _check(tmp_path, monkeypatch, capsys, fits, cells=4.0) == 0
