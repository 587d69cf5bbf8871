"""The memory guard: per-cell records in a live IPython shell, scaled to every GPU profile.

The guard must fail when a cell keeps one more unquantized copy of the base model alive: a
synthetic chapter run in an in-process IPython shell holds 3 copies of the tiny model (fits the
4 GB profile by the guard's arithmetic) and then 4 (does not), and 4 then 5 on the T4.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers.hardware import card_budget
from helpers.memory import GIB, plan, resident
from helpers.profiles import PROFILES
from tools import memory_guard

LOAD = """
from transformers import AutoModelForCausalLM
from helpers.paths import TINY_MODEL_DIR
model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
"""


@pytest.fixture(autouse=True)
def no_measurement(tmp_path, monkeypatch):
    """These synthetic chapters test the prediction: no GPU measurement overrides it."""
    monkeypatch.setattr("tools.gpucheck.measured.MEASURED", tmp_path / "no-measurement.json")


@pytest.fixture
def shell(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv(resident.ENV, str(tmp_path / "guard.json"))
    shell = InteractiveShell.instance()
    yield shell
    resident.stop()
    shell.run_cell("model = copies = None")
    InteractiveShell.clear_instance()  # later tests see no IPython, as in a plain pytest run


def run(shell, source: str) -> None:
    result = shell.run_cell(source)
    assert result.success, result.error_in_exec or result.error_before_exec


def rows_by_profile(path) -> dict:
    return {r.profile: r for r in memory_guard.evaluate(resident.load_record(path))}


def test_one_more_unquantized_copy_fails(shell, tmp_path, monkeypatch):
    # The planned budgets (CUDA context 0.5 GiB), not whatever data/gpu/measured.json measured:
    # the copies below are sized to them.
    planned = {
        name: card_budget(name, tmp_path / "none.json").gib for name in memory_guard.CARD_GIB
    }
    monkeypatch.setattr(memory_guard, "CARD_GIB", planned)
    run(shell, "from helpers import report\nreport.set_chapter('99_synthetic')")
    run(shell, LOAD)
    run(shell, "import copy\ncopies = [copy.deepcopy(model) for _ in range(2)]")
    cells = resident.load_record(tmp_path / "guard.json")["99_synthetic"]["cells"]
    assert cells[-1]["linear"] == pytest.approx(3) and cells[-1]["embedding"] == pytest.approx(3)
    rows = rows_by_profile(tmp_path / "guard.json")
    assert rows["gpu-4gb"].ok and rows["t4"].ok, memory_guard.table(list(rows.values()))
    run(shell, "copies.append(copy.deepcopy(model))  # one more unquantized copy")
    rows = rows_by_profile(tmp_path / "guard.json")
    assert not rows["gpu-4gb"].ok and "copies.append" in rows["gpu-4gb"].cell
    assert rows["t4"].ok
    run(shell, "copies.append(copy.deepcopy(model))")
    rows = rows_by_profile(tmp_path / "guard.json")
    assert not rows["t4"].ok and rows["t4"].peak_bytes > rows["t4"].card_bytes
    # freeing them brings the record back down, and the check names the peak cell
    run(shell, "copies = None")
    assert resident.load_record(tmp_path / "guard.json")["99_synthetic"]["cells"][-1]["linear"] == 1


def test_check_command_exits_1_with_a_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))
    cell = {"cell": 7, "label": "copies = ...", "linear": 5.0, "embedding": 5.0}
    cell |= {"linear_4bit": 0.0, "graph": False}
    data = {"02_lora": {"unsupported": {"t4-8b": "stops"}, "cells": [cell]}}
    resident.save_record(tmp_path / "g.json", data)
    assert memory_guard.main(["check", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr()
    assert "02_lora on t4: cell +7 `copies = ...`" in err.err and "skipped: stops" in err.out
    cell |= {"linear": 1.0, "embedding": 1.0}
    resident.save_record(tmp_path / "g.json", data)
    assert memory_guard.main(["check", str(tmp_path / "g.json")]) == 0
    from helpers.report import load_results

    peaks = load_results(tmp_path / "results.json")["02_lora"]["predicted_peak_gib"]
    assert set(peaks) == {"t4", "t4x2", "p100", "gpu-4gb", "gpu-bf16"}  # t4-8b skipped
    # no measurements at all is an error, not a pass
    assert memory_guard.main(["check", str(tmp_path / "missing.json")]) == 2


def test_training_cells_add_the_planner_terms():
    cell = {"cell": 1, "label": "", "linear": 0.0, "embedding": 0.0, "linear_4bit": 1.0}
    profile = PROFILES["t4"]
    shape = plan.profile_shape(profile)
    idle = memory_guard.predict({**cell, "graph": False}, profile, shape)
    training = memory_guard.predict({**cell, "graph": True}, profile, shape)
    assert 0.5 * GIB < idle < 1.5 * GIB  # one NF4 copy of the 1.5B's linear layers
    assert training - idle > 1 * GIB  # fp32 logits, upcast embeddings, adapters' state


def test_resident_copies_counts_storage_kinds():
    layout = resident.BaseLayout.of(resident.tiny_shape())
    (out_in, _), *_ = layout.linear.items()
    weight = torch.zeros(out_in)
    packed = torch.zeros(out_in[0] * out_in[1] // 2, dtype=torch.uint8)
    found = resident.resident_copies(layout, [weight, weight.view(-1, *out_in[1:]), packed])
    per = out_in[0] * out_in[1] / layout.elements("linear")
    assert found["linear"] == pytest.approx(per)  # a view of the same storage counts once
    assert found["linear_4bit"] == pytest.approx(per) and found["embedding"] == 0


def test_models_in_the_profiles_precision_scale_as_4bit_on_4bit_profiles():
    import dataclasses

    layout = resident.BaseLayout.of(resident.tiny_shape())
    (out_in, _), *_ = layout.linear.items()
    weight = torch.zeros(out_in)
    ptr = weight.untyped_storage().data_ptr()
    found = resident.resident_copies(layout, [weight], marked={ptr})
    assert found["linear"] == 0 and found["profile_linear"] > 0
    one = {kind: 0.0 for kind in resident.COPY_KINDS} | {"graph": False}
    t4 = PROFILES["t4"]
    unquantized_t4 = dataclasses.replace(t4, load_in_4bit=False)
    shape = plan.profile_shape(t4)
    follows = one | {"profile_linear": 1.0, "profile_embedding": 1.0}
    explicit = one | {"linear": 1.0, "embedding": 1.0}
    assert memory_guard.predict(follows, t4, shape) < 0.6 * memory_guard.predict(
        explicit, t4, shape
    )
    assert memory_guard.predict(follows, unquantized_t4, shape) == memory_guard.predict(
        explicit, t4, shape
    )


def test_relative_guard_file_is_taken_from_the_course_root(monkeypatch):
    from helpers.paths import REPO_ROOT

    monkeypatch.setenv(resident.ENV, "build/test-memguard.json")
    assert resident.measurement_path() == REPO_ROOT / "build" / "test-memguard.json"
    monkeypatch.delenv(resident.ENV)
    assert resident.measurement_path() is None and not resident.start("00_setup")


def test_a_cell_the_guard_could_not_measure_fails_check(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))
    cell = {"cell": 3, "label": "x = odd()", "error": "RuntimeError: boom", "graph": False}
    resident.save_record(tmp_path / "g.json", {"00_setup": {"unsupported": {}, "cells": [cell]}})
    assert memory_guard.main(["check", str(tmp_path / "g.json")]) == 1


def test_chapter_10_is_planned_with_10_percent_to_spare_on_the_4gb_card():
    """Chapter 10's per-cell records on the tiny profile (the chapter run with COURSE_MEMGUARD
    set and small sizes: 2 DPO and GRPO steps, 4 test records): at commit f9d6e9c it kept up to
    five copies of the model (the SFT model, both DPO policies, the GRPO probe and TRL's copy of
    it); now one, each policy a fresh adapter on the merged SFT model. Planned, not measured."""
    data = Path(__file__).parent / "data"
    one = {r.profile: r for r in memory_guard.evaluate(resident.load_record(data / "memguard-tiny-ch10-one-model.json"))}  # fmt: skip
    five = {r.profile: r for r in memory_guard.evaluate(resident.load_record(data / "memguard-tiny-ch10-five-copies.json"))}  # fmt: skip
    for name in ("gpu-4gb", "t4"):
        row = one[name]
        assert row.source == "planned" and row.spare == 0.10
        assert row.peak_bytes <= 0.9 * row.card_bytes, memory_guard.table(list(one.values()))
        assert row.ok and "with 10% to spare" in row.verdict
    assert five["gpu-4gb"].peak_bytes > five["gpu-4gb"].card_bytes and not five["gpu-4gb"].ok
    assert "fresh_policy" in five["gpu-4gb"].cell  # the GRPO probe beside all the rest
    # the spare bites: a peak at 95 % of the card fits the card but not the chapter's demand
    near = dataclasses.replace(one["gpu-4gb"], peak_bytes=int(0.95 * one["gpu-4gb"].card_bytes))
    assert not near.ok and dataclasses.replace(near, spare=0.0).ok
    assert "t4-8b" in memory_guard.UNSUPPORTED["10_preference"] and one["t4-8b"].peak_bytes is None
