"""``tools.gpucheck`` without a GPU: job parsing, the per-cell hook, run summaries, the
measured.json writer, the README generator, the budgets and the no-CUDA exit; the benchmark's
two loops on the tiny model (CPU, fp32). The GPU run itself is ``make gpu-check``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import hardware
from helpers.paths import TINY_MODEL_DIR
from tools.gpucheck import __main__ as cli
from tools.gpucheck import benchmark, readme, runner, summary
from tools.gpucheck.jobs import CLAIMS, default_jobs, parameters, parse_jobs


def test_parse_jobs_pairs_all_and_default():
    assert parse_jobs("t4:1, gpu-4gb:03_qlora t4:01") == [("t4", "01"), ("gpu-4gb", "03")]
    assert parse_jobs("t4-8b:all") == [("t4-8b", ch) for ch in CLAIMS["t4-8b"]]
    assert parse_jobs(None) == parse_jobs("") == default_jobs()
    assert ("t4", "05") in default_jobs() and ("t4-8b", "01") not in default_jobs()


@pytest.mark.parametrize("bad", ["t4", "t4:", "tiny:01", "a100:01", "t4:x1", "t4:123"])
def test_parse_jobs_rejects_bad_pairs_by_name(bad):
    with pytest.raises(ValueError, match="--jobs"):
        parse_jobs(bad)


def test_parameters_are_short_runs_and_t4_8b_shorter():
    assert parameters("t4", "03")["MAX_STEPS"] == 12
    assert parameters("t4-8b", "03")["MAX_STEPS"] == 4
    assert parameters("gpu-4gb", "01") == {"PROFILE": "gpu-4gb"}


def test_hook_records_every_cell_and_its_error(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    log = tmp_path / "gpu.jsonl"
    monkeypatch.setenv("GPU_LOG", str(log))
    shell = InteractiveShell()
    shell.run_cell(runner.HOOK)
    shell.run_cell("x = 1")
    shell.run_cell("1 / 0")
    records = summary.read_records(log)
    assert [r["cell"] for r in records][-2:] == ["x = 1", "1 / 0"]
    assert records[-1]["err"].startswith("ZeroDivisionError") and records[-2]["err"] is None
    nb = runner.with_hook({"cells": [{"cell_type": "markdown", "source": "hi"}]})
    assert nb["cells"][0]["source"] == runner.HOOK and len(nb["cells"]) == 2


def _records(folder, rows, results=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))


def test_summarize_peak_cell_first_error_and_throughput(tmp_path):
    rows = [
        {"t": 1, "cell": "load()\nmore", "err": None, "reserved": 1.5},
        {"t": 2, "cell": "ppl()", "err": "OutOfMemoryError: CUDA out of memory", "reserved": 3.7},
        {"t": 3, "cell": "later()", "err": "NameError: x", "reserved": 3.7},
    ]
    _records(tmp_path / "a", rows, {"03_qlora": {"train_tokens_per_s": 812.5, "x": 1}})
    row = summary.summarize(tmp_path / "a", "gpu-4gb", "03", 3.06, 1, False)
    assert row["status"] == "failed: OutOfMemoryError: CUDA out of memory"
    assert (row["peak_reserved_gib"], row["peak_cell"]) == (3.7, "ppl()")
    assert row["train_tokens_per_s"] == 812.5 and set(row) == set(summary.RUN_KEYS)
    _records(tmp_path / "b", rows[:1])
    ok = summary.summarize(tmp_path / "b", "t4", "01", 14.0, 0, False)
    assert ok["status"] == "ok" and ok["peak_cell"] == "load()" and ok["train_tokens_per_s"] is None
    assert summary.summarize(tmp_path / "b", "t4", "01", 14.0, -9, True)["status"] == "timeout"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "papermill.log").write_text("...\nNo such kernel named python3\n")
    lost = summary.summarize(tmp_path / "c", "t4", "01", 14.0, 1, False)
    assert lost["status"].startswith("failed: papermill exited 1: No such kernel")


def _doc(runs):
    return {"gpu": "NVIDIA H200", "torch": "2.11.0", "date": "2026-12-05", "commit": "abc1234",
            "cuda_context_gib": 0.52, "budgets": {"t4": 13.98}, "runs": runs}  # fmt: skip


def test_write_atomic_checks_the_schema_and_leaves_nothing_half_written(tmp_path):
    row = summary.failed_row("t4", "01", 13.98, "failed: shape twin build exited 1")
    path = summary.write_atomic(tmp_path / "gpu" / "measured.json", _doc([row]))
    assert json.loads(path.read_text())["runs"] == [row]
    bad = _doc([{"chapter": "01"}])
    with pytest.raises(ValueError, match="runs\\[0\\] lacks"):
        summary.write_atomic(tmp_path / "other.json", bad)
    del bad["gpu"]
    with pytest.raises(ValueError, match="missing 'gpu'"):
        summary.write_atomic(tmp_path / "other.json", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu"]


def test_readme_section_labels_measured_planned_and_over_budget(tmp_path):
    doc = json.loads((Path(__file__).parent / "data" / "measured-9a73c0f.json").read_text())
    text = readme.section(doc)
    assert "**Measured** on one NVIDIA H200" in text and "2026-12-04" in text and "9a73c0f" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| 03 "))
    assert "3.98 of 4.00 GiB; **over the" in line  # gpu-4gb's 3.98 GiB: over the real budget
    assert "planned (not measured)" in text and "| `gpu-4gb` | 3.81 |" in text
    page = tmp_path / "README.md"
    page.write_text(f"# x\n{readme.BEGIN}\nold\n{readme.END}\ntail\n")
    assert readme.rewrite(page, doc) and not readme.rewrite(page, doc)
    assert "old" not in page.read_text() and page.read_text().endswith(f"{readme.END}\ntail\n")
    page.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        readme.rewrite(page, doc)


def test_budgets_are_total_less_context_less_margin(tmp_path):
    t4 = hardware.card_budget("t4", tmp_path / "none.json")
    assert (t4.total_gib, t4.context_gib, t4.context_source) == (14.75, 0.5, "planned")
    assert t4.gib == round(14.75 - 0.5 - hardware.BUDGET_MARGIN_GIB, 2)
    measured = tmp_path / "m.json"
    measured.write_text(json.dumps(_doc([])))
    small = hardware.card_budget("gpu-4gb", measured)
    assert small.context_source == "measured on NVIDIA H200, 2026-12-05"
    assert small.gib == round(3.81 - 0.52 - hardware.BUDGET_MARGIN_GIB, 2)
    with pytest.raises(KeyError, match="tiny"):
        hardware.card_budget("tiny")
    assert cli.budgets_for({"t4"}, 0.5) == {"t4": t4.gib}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU machine")
def test_no_cuda_exits_2_with_a_clear_message(capsys):
    assert cli.main(["run", "--jobs", "t4:01"]) == 2
    assert "gpucheck needs a CUDA GPU" in capsys.readouterr().err


def test_bad_jobs_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(cli.cuda, "require_cuda", lambda: ("GPU", "torch"))
    monkeypatch.setattr(cli.cuda, "measure_context", lambda: None)
    assert cli.main(["run", "--jobs", "t4:zz"]) == 2
    assert "--jobs 't4:zz'" in capsys.readouterr().err


@pytest.mark.parametrize("loop", ["course", "peft"])
def test_benchmark_loops_train_on_the_tiny_model(loop, monkeypatch):
    monkeypatch.setitem(benchmark.CONFIG, "max_seq_len", 24)
    monkeypatch.setitem(benchmark.CONFIG, "grad_accum_steps", 2)
    result = benchmark.run(loop, str(TINY_MODEL_DIR), steps=1)
    assert result["status"] == "ok" and result["train_tokens_per_s"] > 0
    assert result["peak_reserved_gib"] is None  # no GPU


@pytest.mark.gpu
def test_cuda_context_is_measured():
    from tools.gpucheck import cuda

    context = cuda.measure_context()
    assert context is not None and 0.05 < context < 2.0


def test_an_out_of_memory_of_the_whole_gpu_is_told_apart_from_the_cap():
    cap = "OutOfMemoryError: Tried to allocate 1.16 GiB. GPU 0 has a total capacity of 139.80 GiB of which 105.75 GiB is free."
    full = "OutOfMemoryError: Tried to allocate 1.16 GiB. GPU 0 has a total capacity of 139.80 GiB of which 312.00 MiB is free."
    assert summary.device_full(cap) == "" and "whole GPU was full" in summary.device_full(full)


def test_readme_shows_the_benchmark_beside_unsloth():
    ok = {"status": "ok", "peak_reserved_gb": 8.5, "train_tokens_per_s": 2100.0}
    bench = {"config": benchmark.CONFIG, "unsloth": benchmark.UNSLOTH,
             "loops": {"course": ok, "peft": {"status": "timeout"}}}  # fmt: skip
    text = readme.section({**_doc([]), "benchmark": bench})
    assert "| Unsloth (Tesla T4" in text and "| 7.89 GB |" in text
    assert "| course | 8.50 GB | 2100.0 | ok |" in text and "| peft | - | - | timeout |" in text


def test_a_rerun_row_names_its_commit_and_is_looked_up_at_it(monkeypatch):
    from tools.gpucheck import measured

    doc = _doc([])
    doc["commit"] = "aaaaaaa"
    doc["runs"] = [{"chapter": "03", "profile": "gpu-4gb", "budget_gib": 2.9, "status": "ok",
                    "peak_reserved_gib": 2.19, "peak_cell": "x", "train_tokens_per_s": None,
                    "commit": "bbbbbbb"}]  # fmt: skip
    assert "re-run at bbbbbbb" in readme.section(doc)
    seen = []
    monkeypatch.setattr(measured, "_unchanged", lambda commit, nb: seen.append(commit) or True)
    assert measured.lookup("gpu-4gb", "03_qlora", doc)["commit"] == "bbbbbbb"
    assert seen == ["bbbbbbb"]
