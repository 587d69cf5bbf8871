"""The README's "What runs where" measurements, generated from ``data/gpu/measured.json``.

The generated text sits between two markers in README.md; ``rewrite`` replaces only that.
"""

from __future__ import annotations

from pathlib import Path

from helpers.hardware import card_budget
from tools.gpucheck.jobs import CLAIMS

BEGIN = "<!-- gpucheck:begin (python -m tools.gpucheck readme writes this part) -->"
END = "<!-- gpucheck:end -->"


def budget_lines(doc: dict) -> list[str]:
    """Per card: total PyTorch can allocate, CUDA context, margin, budget (planned/measured)."""
    lines = ["| profile | card total (GiB) | CUDA context | margin | budget (GiB) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for profile in CLAIMS:
        b = card_budget(profile)
        lines.append(f"| `{profile}` | {b.total_gib:.2f} | {b.context_gib:.2f} "
                     f"({b.context_source}) | {b.margin_gib:.2f} | {b.gib:.2f} |")  # fmt: skip
    return lines


def _cell(run: dict | None) -> str:
    """One table cell: status, peak of cap, and a warning when over today's budget."""
    if run is None:
        return "planned (not measured)"
    status = run["status"] if run["status"] in ("ok", "timeout") else "**fails**"
    peak = f"{run['peak_reserved_gib'] or 0:.2f} of {run['budget_gib']:.2f} GiB"
    budget = card_budget(run["profile"]).gib
    if (run["peak_reserved_gib"] or 0) > budget:
        peak += f"; **over the {budget:.2f} GiB budget**"
    if run.get("commit"):  # re-run at a later commit than the document's
        peak += f"; re-run at {run['commit']}"
    if run["status"].startswith("failed"):
        reason = run["status"].removeprefix("failed: ").split(".")[0][:70]
        return f"{status}: {reason} ({peak})"
    return f"{status}, peak {peak}"


def run_lines(doc: dict) -> list[str]:
    """chapter x profile: status and peak reserved memory against the run's cap."""
    runs = {(r["profile"], r["chapter"]): r for r in doc["runs"]}
    chapters = sorted({ch for chs in CLAIMS.values() for ch in chs} | {c for _, c in runs})
    lines = ["| chapter | " + " | ".join(f"`{p}`" for p in CLAIMS) + " |",
             "|---|" + "---|" * len(CLAIMS)]  # fmt: skip
    for ch in chapters:
        cells = [_cell(runs.get((p, ch))) if ch in CLAIMS[p] or (p, ch) in runs else "not claimed"
                 for p in CLAIMS]  # fmt: skip
        lines.append(f"| {ch} | " + " | ".join(cells) + " |")
    return lines


def benchmark_lines(doc: dict) -> list[str]:
    """The Unsloth-config benchmark, when the document holds one: each loop beside Unsloth's."""
    bench = doc.get("benchmark")
    if not bench:
        return []
    u = bench["unsloth"]
    lines = ["", f"QLoRA at Unsloth's T4 configuration for Qwen2.5-7B on the 7B shape twin "
             f"({json_config(bench['config'])}; full 2,048-token sequences, run beside the "
             "chapters, so tokens/s are not a T4's):", "",
             "| loop | peak reserved | tokens/s | status |", "|---|---|---|---|",
             f"| Unsloth ({u['gpu']}, {u['source']}) | {u['peak_reserved_gb']} GB | - | published |"]  # fmt: skip
    for loop, r in bench["loops"].items():
        peak = f"{r['peak_reserved_gb']:.2f} GB" if r.get("peak_reserved_gb") else "-"
        lines.append(f"| {loop} | {peak} | {r.get('train_tokens_per_s') or '-'} | "
                     f"{r['status'][:80]} |")  # fmt: skip
    return lines


def json_config(config: dict) -> str:
    """``r=16, micro-batch 2 x 4, ...`` from the benchmark's configuration."""
    return (f"r={config['lora_r']} on all linear layers, micro-batch {config['micro_batch_size']} "
            f"x {config['grad_accum_steps']} accumulation, {config['max_seq_len']} tokens, "
            f"checkpointing, {config['compute_dtype']}, {config['optimizer']}")  # fmt: skip


def section(doc: dict) -> str:
    """The generated Markdown: what was measured, where, when, at which caps; then budgets."""
    caps = ", ".join(f"`{p}` {g:.2f} GiB" for p, g in sorted(doc.get("budgets", {}).items()))
    head = [
        f"**Measured** on one {doc['gpu']} (torch {doc['torch']}) on {doc['date']}, course "
        f"commit {doc['commit']}: each chapter run on its profile's shape twin, each kernel capped with `COURSE_GPU_MEMORY_GIB` ({caps}), short runs; peak = "
        "`torch.cuda.max_memory_reserved()` (the CUDA context is not in it). Pairs not run are "
        "**planned** figures only.",
        *(["", doc["note"]] if doc.get("note") else []),
        "",
        *run_lines(doc),
        *benchmark_lines(doc),
        "",
        "Card budgets (what `COURSE_GPU_MEMORY_GIB`, the doctor and the memory guard use; "
        "sources in `helpers/hardware.py`):",
        "",
        *budget_lines(doc),
    ]
    return "\n".join(head)


def rewrite(readme: Path, doc: dict) -> bool:
    """Replace the text between ``BEGIN`` and ``END`` in ``readme``; True when it changed.

    Raises:
        ValueError: the markers are missing or out of order (the message names them).
    """
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: markers {BEGIN!r} ... {END!r} not found in order")
    new = text[: start + len(BEGIN)] + "\n" + section(doc) + "\n" + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text
