"""The memory guard: predict each chapter's GPU peak from its run on the tiny profile.

While a chapter runs on the tiny profile with ``COURSE_MEMGUARD=<file.json>`` set, the hook
that ``helpers.report.set_chapter`` registers (``helpers.memory.resident``) records, after every
cell, which copies of the base model's weights stay resident and whether the cell built an
autograd graph; for such a cell the planner's training terms (gradients, optimizer state, saved
activations, backward's workspace) for the profile's run are added.

``check`` scales every cell to every GPU profile (the profile's model and dtype; unquantized
copies at the profile's compute dtype, 4-bit copies as NF4) and fails when a predicted peak
exceeds the card's budget (``helpers.hardware.card_budget``), or the share of it a chapter must
leave free (``SPARE``). A GPU measurement of the
chapter's current version (``data/gpu/measured.json``, ``python -m tools.gpucheck``)
outranks the prediction; every verdict says "measured on <gpu>, <date>" or "planned". What is
predicted is the state at the end of each cell: a transient inside a cell (a temporary copy
freed before the cell ends, fp32 logits over the vocabulary) is not, which is why the
prediction misses the 2026-12-04 measurement (tests/test_memguard_measured.py).

    python -m tools.memory_guard check [FILE]   # fail (exit 1) with a table of what overflows
    python -m tools.memory_guard table [FILE]   # chapter x profile: predicted peak, card, verdict
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.hardware import CARD_TOTAL_GIB, card_budget
from helpers.memory import DTYPE_BYTES, GIB, ModelShape
from helpers.memory import naive as planner
from helpers.memory.plan import profile_shape, training_run
from helpers.memory.resident import COPY_KINDS, ENV, BaseLayout, load_record, measurement_path
from helpers.paths import CHAPTERS_DIR, build_dir

# Each GPU profile's budget (GiB): what PyTorch can allocate on its real card less the CUDA
# context less a margin; one home, helpers.hardware.card_budget (sources there).
CARD_GIB = {name: card_budget(name).gib for name in CARD_TOTAL_GIB}
# Profiles a chapter does not support: it stops at its first cell with a message naming the
# profile that works (README, "What runs where"). Skipped by the guard, with the reason.
UNSUPPORTED = {
    chapter: {"t4-8b": "the chapter also loads the 7B model unquantized; it stops on t4-8b"}
    for chapter in ("01_quantization", "02_lora", "05_evaluation")
}
UNSUPPORTED["03_qlora"] = {
    "t4-8b": "not predicted: on t4-8b the chapter takes its QLoRA-only path (the unquantized "
    "model does not fit), which the tiny run does not execute; never run on a GPU"
}
UNSUPPORTED["07_deploy"] = {
    "t4-8b": "the chapter merges the whole model at once: the merged 7B model in float16 is "
    "15.2 GB, more than a T4 and Colab's host memory; it stops on t4-8b"
}
UNSUPPORTED["06_gptq_awq"] = UNSUPPORTED["07_deploy"]  # it merges the same model first
UNSUPPORTED["08_two_gpus"] = {"t4-8b": "the chapter plans and runs t4x2 (1.5B); it stops on t4-8b"}
UNSUPPORTED["09_your_data"] = {
    name: "the chapter runs on tiny, t4 and gpu-4gb only; it stops on this profile before it "
    "installs or loads anything"
    for name in ("t4-8b", "t4x2", "p100", "gpu-bf16")
}
UNSUPPORTED["09_your_data"] |= {
    name: "not predicted: its GPU path (4-bit base, fp16, checkpointing) was run on the CPU on a "
    "small Qwen2 twin only, never on a GPU; the chapter prints the planner's figure as planned"
    for name in ("t4", "gpu-4gb")
}
UNSUPPORTED["11_pretraining"] = {
    name: "not predicted: the chapter trains the tiny Llama's shape on the CPU on every profile "
    "and never loads the profile's model; on a GPU its only CUDA use is section 4's FSDP "
    "measurement of that shape (make gpu-check runs it on t4), which a CPU run cannot predict; "
    "its figures for larger models are the planner's, printed as planned"
    for name in ("t4", "gpu-4gb", "t4-8b", "t4x2", "p100", "gpu-bf16")
}
UNSUPPORTED["10_preference"] = {
    "t4-8b": "the chapter has no path for the 7B model (never planned or run there); it stops "
    "on t4-8b before it loads the model"
}
# Share of the budget a chapter's planned peak must leave free, where its issue asks for it:
# chapter 10 holds one model at a time so that it fits the 4 GB card and the T4 with 10 % to
# spare (before, it held up to five copies: 3.79 GiB planned on gpu-4gb's 2.90). The training
# terms are the profile's SFT batch (gpu-4gb: 2 x 256 tokens). Chapter 10's GRPO step has more
# rows (4 prompts x 4 answers, up to 16 x 83 tokens on the tiny tokenizer), so the chapter runs
# its backward ROWS_PER_BACKWARD rows at a time, chosen so that one backward holds no more tokens
# than that SFT batch (helpers.grpo.naive, rows_per_backward; the same gradient as one pass).
# Sampling the G answers (generate, no graph) is not counted beyond the cell's copies.
SPARE = {"10_preference": 0.10}
CAVEAT = "planned: CPU-calibrated estimates; measured rows come from data/gpu/measured.json"


def predict(cell: dict, profile, shape: ModelShape) -> int:
    """Bytes one recorded cell would hold on a GPU running ``profile``.

    Unquantized copies at the profile's compute dtype, 4-bit copies as NF4 (with double
    quantization); a cell that built a graph adds the planner's training terms (LoRA, or
    QLoRA with the fp32 upcast when 4-bit weights are resident); then the allocator's reserve.
    """
    layout, b = BaseLayout.of(shape), DTYPE_BYTES[profile.compute_dtype]
    copies = {kind: cell.get(kind, 0.0) for kind in COPY_KINDS}
    four_bit = copies["linear_4bit"]
    unquantized = copies["linear"]
    if profile.load_in_4bit:
        four_bit += copies["profile_linear"]
    else:
        unquantized += copies["profile_linear"]
    embeddings = copies["embedding"] + copies["profile_embedding"]
    total = b * (
        unquantized * layout.elements("linear") + embeddings * layout.elements("embedding")
    )
    nf4 = sum(planner._nf4_bytes(o * i, True) * n for (o, i), n in layout.linear.items())
    total += four_bit * nf4
    if cell["graph"]:
        method = "qlora" if four_bit >= 0.5 else "lora"
        plan = planner.training_memory(shape, training_run(profile, method), device="cpu")
        total += plan.gradients + plan.optimizer + plan.activations + plan.transient
        if method == "qlora":  # prepare_model_for_kbit_training: the rest in fp32
            total += (4 - b) * planner.parameter_counts(shape)["other"]
    return int(total * (1 + planner.ALLOCATOR_RESERVE))


@dataclass(frozen=True)
class Row:
    """One chapter on one profile: its worst cell, or why it was skipped."""

    chapter: str
    profile: str
    peak_bytes: int | None  # None: skipped
    card_bytes: int  # the card less its CUDA context
    cell: str = ""
    reason: str = ""
    error: bool = False  # the guard failed to measure a cell: check fails
    measured: dict | None = None  # a GPU run of this chapter's current version, if any
    spare: float = 0.0  # share of the budget a planned peak must leave free (``SPARE``)

    @property
    def ok(self) -> bool:
        """A measurement outranks the prediction: a measured run fits when it ran and
        peaked within the budget."""
        if self.measured is not None:
            peak = self.measured["peak_reserved_gib"] or 0.0
            return self.measured["status"] == "ok" and peak * GIB <= self.card_bytes
        if self.error:
            return False
        return self.peak_bytes is None or self.peak_bytes <= self.card_bytes * (1 - self.spare)

    @property
    def source(self) -> str:
        """ "measured on <gpu>, <date> (commit ...)" or "planned"."""
        m = self.measured
        return f"measured on {m['gpu']}, {m['date']} (commit {m['commit']})" if m else "planned"

    @property
    def verdict(self) -> str:
        if self.measured is not None:
            m = self.measured
            what = "fits" if self.ok else "DOES NOT FIT"
            status = "" if m["status"] == "ok" else f", {m['status'][:60]}"
            return f"{what} ({self.source}: {m['peak_reserved_gib']:.2f} GiB{status})"
        if self.peak_bytes is None:
            return f"{'FAILED' if self.error else 'skipped'}: {self.reason}"
        spare = f", with {self.spare:.0%} to spare" if self.spare else ""
        return f"{'fits' if self.ok else 'DOES NOT FIT'} (planned{spare})"


def evaluate(data: dict, profiles: dict | None = None, measured: dict | None = None) -> list[Row]:
    """Every recorded chapter on every GPU profile (``CARD_GIB``), each with its GPU
    measurement when ``measured`` (default ``data/gpu/measured.json``) holds one for the
    chapter's current version: a measurement outranks the prediction."""
    from tools.gpucheck import measured as gpu

    doc = gpu.load() if measured is None else measured
    rows = [
        dataclasses.replace(r, measured=gpu.lookup(r.profile, r.chapter, doc))
        for r in predict_rows(data, profiles)
    ]
    return rows


def predict_rows(data: dict, profiles: dict | None = None) -> list[Row]:
    """Every recorded chapter on every GPU profile, predicted from the tiny run only."""
    from helpers.profiles import PROFILES

    profiles = profiles or PROFILES
    rows = []
    for chapter in sorted(data):
        cells = data[chapter]["cells"]
        unsupported = {**UNSUPPORTED.get(chapter, {}), **data[chapter]["unsupported"]}
        for name, profile in profiles.items():
            if name == "tiny":
                continue
            card = int(CARD_GIB.get(name, 0) * GIB)
            skip = unsupported.get(name) or ("" if name in CARD_GIB else "no card size known")
            try:
                shape = profile_shape(profile)
            except KeyError:
                skip = skip or f"no shape known for {profile.model_id}"
            if skip or not cells:
                rows.append(Row(chapter, name, None, card, reason=skip or "no cells recorded"))
                continue
            broken = [c for c in cells if "error" in c]
            if broken:
                reason = f"not measured: cell {broken[0]['cell']}: {broken[0]['error']}"
                rows.append(Row(chapter, name, None, card, reason=reason, error=True))
                continue
            peaks = [(predict(c, profile, shape), c) for c in cells]
            peak, worst = max(peaks, key=lambda pc: pc[0])
            where = f"+{worst['cell']} `{worst['label']}`"
            rows.append(Row(chapter, name, peak, card, where, spare=SPARE.get(chapter, 0.0)))
    return rows


def table(rows: list[Row]) -> str:
    """chapter x profile: predicted peak, card (less its CUDA context), verdict, worst cell
    (``+n``: the n-th code cell after the one that calls ``set_chapter``, and its first line)."""
    lines = [f"Predicted GPU peaks from the tiny run ({CAVEAT}):"]
    lines.append(f"{'chapter':26s} {'profile':9s} {'peak GiB':>8s} {'card GiB':>8s}  verdict")
    for r in rows:
        peak = f"{r.peak_bytes / GIB:8.2f}" if r.peak_bytes is not None else f"{'-':>8s}"
        cell = f"  cell {r.cell}" if r.cell else ""
        lines.append(
            f"{r.chapter:26s} {r.profile:9s} {peak} {r.card_bytes / GIB:8.2f}  {r.verdict}{cell}"
        )
    return "\n".join(lines)


def record_peaks(rows: list[Row]) -> None:
    """``predicted_peak_gib`` per chapter, a dict by profile name, into the results file."""
    from helpers import report

    for chapter in sorted({r.chapter for r in rows}):
        peaks = {
            r.profile: round(r.peak_bytes / GIB, 2)
            for r in rows
            if r.chapter == chapter and r.peak_bytes is not None
        }
        report.set_chapter(chapter)
        report.record("predicted_peak_gib", peaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.memory_guard", description=__doc__)
    parser.add_argument("command", choices=["check", "table"])
    parser.add_argument("file", nargs="?", help=f"measurements (default ${ENV} or build/)")
    args = parser.parse_args(argv)
    path = Path(args.file) if args.file else measurement_path() or build_dir() / "memguard.json"
    data = load_record(path)
    known = {p.stem for p in CHAPTERS_DIR.glob("*.ipynb")}
    data = {k: v for k, v in data.items() if k in known}
    if not data:
        print(
            f"{path}: no chapter measurements. Run the chapters on the tiny profile with "
            f"{ENV}={path} set (make test does).",
            file=sys.stderr,
        )
        return 2
    rows = evaluate(data)
    print(table(rows))
    record_peaks(rows)
    bad = [r for r in rows if not r.ok]
    if args.command == "check" and bad:
        print(f"\n{len(bad)} chapter/profile pairs would overflow their card:", file=sys.stderr)
        for r in bad:
            if r.measured is not None:
                what = r.verdict
            else:
                what = (
                    r.reason if r.error else f"cell {r.cell} -> predicted {r.peak_bytes / GIB:.2f}"
                )
                what += "" if r.error else f" GiB > {r.card_bytes / GIB:.2f} GiB (planned)"
            print(f"  {r.chapter} on {r.profile}: {what}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
