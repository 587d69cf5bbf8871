"""From run folders to ``data/gpu/measured.json``, and from it to the README's table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from helpers.atomic import write_text

SCHEMA_KEYS = ("gpu", "torch", "date", "commit", "cuda_context_gib", "budgets", "runs")
RUN_KEYS = ("chapter", "profile", "budget_gib", "status", "peak_reserved_gib", "peak_cell",
            "train_tokens_per_s")  # fmt: skip


def read_records(path: Path) -> list[dict]:
    """The hook's per-cell records (empty when the kernel never ran a cell)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tokens_per_s(results: dict) -> float | None:
    """A chapter's training throughput from its results file: the first number recorded under
    a name that ends in ``tokens_per_s`` (None: the chapter records none)."""
    for chapter in results.values():
        for name, value in chapter.items() if isinstance(chapter, dict) else ():
            if name.endswith("tokens_per_s") and isinstance(value, int | float):
                return float(value) if math.isfinite(value) else None
    return None


def device_full(error: str, below_gib: float = 2.0) -> str:
    """A note when an out-of-memory error came from the whole GPU being full (other runs
    side by side), not from the run's own cap: CUDA's message says how much was free."""
    found = re.search(r"of which ([0-9.]+) (GiB|MiB) is free", error)
    if not found:
        return ""
    free = float(found[1]) / (1024 if found[2] == "MiB" else 1)
    return (
        " [the whole GPU was full, not the cap: rerun this job alone]" if free < below_gib else ""
    )


def summarize(folder: Path, profile: str, chapter: str, budget_gib: float,
              returncode: int | None, timed_out: bool) -> dict:  # fmt: skip
    """One run's row: status ("ok", "failed: <first error>", "timeout"), peak reserved memory
    and the cell that raised it (its first line)."""
    records = read_records(folder / "gpu.jsonl")
    peak = max(records, key=lambda r: r.get("reserved", 0.0), default={})
    errors = [r["err"] for r in records if r.get("err")]
    if timed_out:
        status = "timeout"
    elif errors:
        status = f"failed: {errors[0]}{device_full(errors[0])}"
    elif returncode:
        log = folder / "papermill.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        status = f"failed: papermill exited {returncode}: {(tail or ['no log'])[0][:200]}"
    else:
        status = "ok"
    results_file = folder / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    cell = (peak.get("cell") or "").strip().splitlines() if peak.get("reserved") else []
    return {
        "chapter": chapter, "profile": profile, "budget_gib": budget_gib, "status": status,
        "peak_reserved_gib": round(peak.get("reserved", 0.0), 3),
        "peak_cell": cell[0] if cell else None, "train_tokens_per_s": tokens_per_s(results),
    }  # fmt: skip


def check_document(doc: dict) -> None:
    """Raise ValueError naming the first key missing from a measured.json document."""
    for key in SCHEMA_KEYS:
        if key not in doc:
            raise ValueError(f"measured.json: missing {key!r}")
    for i, run in enumerate(doc["runs"]):
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise ValueError(f"measured.json: runs[{i}] lacks {missing}")


def write_atomic(path: Path, doc: dict) -> Path:
    """Check ``doc`` against the schema and write it as JSON: a temporary file in the same
    folder, then a rename, so a crash never leaves half a file."""
    check_document(doc)
    return write_text(path, json.dumps(doc, indent=1) + "\n")  # helpers.atomic


def failed_row(profile: str, chapter: str, budget_gib: float, status: str) -> dict:
    """A row for a run that never started (its twin failed to build)."""
    return {"chapter": chapter, "profile": profile, "budget_gib": budget_gib, "status": status,
            "peak_reserved_gib": None, "peak_cell": None, "train_tokens_per_s": None}  # fmt: skip


def table(doc: dict) -> str:
    """A plain-text summary of the runs (and the benchmark) for the terminal."""
    lines = [f"{'profile':8s} {'ch':3s} {'budget':>7s} {'peak':>7s}  status"]
    for r in doc["runs"]:
        peak = f"{r['peak_reserved_gib']:7.2f}" if r["peak_reserved_gib"] is not None else "      -"
        lines.append(f"{r['profile']:8s} {r['chapter']:3s} {r['budget_gib']:7.2f} {peak}  "
                     f"{r['status'][:100]}")  # fmt: skip
    for loop, res in doc.get("benchmark", {}).get("loops", {}).items():
        lines.append(f"benchmark {loop}: {json.dumps(res)[:200]}")
    return "\n".join(lines)
