"""The memory guard: predict each chapter's GPU peak from its run on the tiny profile.

While a chapter runs on the tiny profile with ``COURSE_MEMGUARD=<file.json>`` set, the hook
that ``helpers.report.set_chapter`` registers records, after every cell, what stays resident:

- copies of the base model's weights still alive, by storage kind: unquantized (16/32-bit
  tensors with the shape of a decoder linear weight, or of the embeddings/head) and 4-bit
  (uint8 codes, two per byte, of a linear weight), each as multiples of the base model's;
- whether the cell ran a forward pass that built an autograd graph (a training step, or a
  gradient): then the planner's training terms (gradients, optimizer state, saved activations,
  backward's workspace) for the profile's run are added.

``check`` scales every cell to every GPU profile (the profile's model and dtype; unquantized
copies at the profile's compute dtype, 4-bit copies as NF4) and fails when a predicted peak
exceeds the card's budget (``helpers.hardware.card_budget``). A GPU measurement of the
chapter's current version (``data/gpu/measured.json``, ``python -m helpers.gpucheck``)
outranks the prediction; every verdict says "measured on <gpu>, <date>" or "planned". What is
predicted is the state at the end of each cell: a transient inside a cell (a temporary copy
freed before the cell ends, fp32 logits over the vocabulary) is not, which is why the
prediction misses the 2026-12-04 measurement (tests/test_memguard_measured.py).

    python -m helpers.memguard check [FILE]   # fail (exit 1) with a table of what overflows
    python -m helpers.memguard table [FILE]   # chapter x profile: predicted peak, card, verdict
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.atomic import write_json
from helpers.hardware import CARD_TOTAL_GIB, card_budget
from helpers.memory import DTYPE_BYTES, GIB, ModelShape, RunSpec
from helpers.memory import naive as planner
from helpers.paths import CHAPTERS_DIR, REPO_ROOT, TINY_MODEL_DIR, build_dir

ENV = "COURSE_MEMGUARD"
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
CAVEAT = "planned: CPU-calibrated estimates; measured rows come from data/gpu/measured.json"
# helpers.models.load_model marks a model it loads in the profile's own precision (no explicit
# load_in_4bit) with this attribute: on the tiny profile it is unquantized, on a 4-bit GPU
# profile its linear layers would be NF4.
PROFILE_MARK = "course_follows_profile"
SKIP_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, str, bytes)
COPY_KINDS = ("linear", "embedding", "linear_4bit", "profile_linear", "profile_embedding")


def measurement_path() -> Path | None:
    """The guard's file, from ``$COURSE_MEMGUARD`` (None: the guard is off); a relative path
    is taken from the course's root folder."""
    value = os.environ.get(ENV)
    if not value:
        return None
    # relative to the course, not to the kernel's folder (nbval runs notebooks elsewhere)
    return Path(value) if Path(value).is_absolute() else REPO_ROOT / value


@dataclass(frozen=True)
class BaseLayout:
    """Element counts of the base model's 2-D weights, by shape (what identifies a copy)."""

    linear: dict[tuple[int, int], int]  # (out, in) -> how many such weights in the model
    embedding: dict[tuple[int, int], int]  # (V, h) -> 1 (tied) or 2 (embeddings + head)

    @classmethod
    def of(cls, shape: ModelShape) -> BaseLayout:
        linear: dict[tuple[int, int], int] = {}
        for out_in in planner.linear_shapes(shape).values():
            linear[out_in] = linear.get(out_in, 0) + shape.num_layers
        embedding = {(shape.vocab_size, shape.hidden_size): 1 if shape.tie_embeddings else 2}
        return cls(linear, embedding)

    def elements(self, kind: str) -> int:
        table = self.linear if kind == "linear" else self.embedding
        return sum(o * i * n for (o, i), n in table.items())


def tiny_shape() -> ModelShape:
    """The shipped tiny model's shape, read from its config."""
    config = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    from transformers import LlamaConfig

    return ModelShape.from_config(LlamaConfig(**config), "tiny-llama")


def reachable_tensors(roots, max_depth: int = 6) -> tuple[list[torch.Tensor], set[int]]:
    """The tensors reachable from ``roots`` (a notebook's variables), and the storages of the
    parameters of models marked ``course_follows_profile`` (loaded in the profile's precision).

    Walks tensors, modules (parameters and buffers), optimizers (their state), dicts, lists,
    tuples, sets and the attributes of plain objects, up to ``max_depth`` levels deep. What a
    chapter keeps alive lives in its variables; walking them costs milliseconds where scanning
    every object the garbage collector tracks takes a second per cell.
    """
    tensors, marked, seen = [], set(), set()
    stack = [(root, 0) for root in roots]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth or isinstance(obj, SKIP_TYPES):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            obj = getattr(obj, "quant_state", None)  # bitsandbytes' absmax and code book
            if obj is None:
                continue
        if isinstance(obj, torch.nn.Module):
            params = [*obj.parameters(), *obj.buffers()]
            tensors += params
            stack += [(getattr(p, "quant_state", None), depth + 1) for p in params]
            if getattr(obj, PROFILE_MARK, False):
                marked |= {p.untyped_storage().data_ptr() for p in params}
            children = [v for v in vars(obj).values() if not isinstance(v, dict)]
        elif isinstance(obj, torch.optim.Optimizer):
            children = list(obj.state.values())
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            children = list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
        stack += [(child, depth + 1) for child in children]
    return tensors, marked


def resident_copies(layout: BaseLayout, tensors=None, marked=frozenset()) -> dict[str, float]:
    """Copies of the base model alive now, by kind, as multiples of the base model's elements.

    Args:
        layout: the base model's weight shapes.
        tensors: the tensors to inspect (default: every tensor and module the garbage
            collector tracks; slow, a second or so).
        marked: storages of a model loaded in the profile's own precision (default: found
            through the ``course_follows_profile`` attribute ``helpers.models`` sets).
    Returns:
        ``{"linear", "embedding"}``: unquantized copies of the linear weights and of the
        embeddings/head; ``"linear_4bit"``: 4-bit copies of the linear weights;
        ``{"profile_linear", "profile_embedding"}``: copies in the profile's own precision
        (unquantized on the tiny profile, 4-bit linear layers on a 4-bit GPU profile).
    """
    if tensors is None:
        with warnings.catch_warnings():  # isinstance on some lazy module attributes warns
            warnings.simplefilter("ignore")
            roots = [o for o in gc.get_objects() if isinstance(o, torch.Tensor | torch.nn.Module)]
        tensors, marked = reachable_tensors(roots, max_depth=1)
    packed = {o * i // 2 for o, i in layout.linear}
    seen: set[int] = set()
    found = dict.fromkeys(COPY_KINDS, 0)
    for t in tensors:
        if t.device.type == "meta" or t.is_sparse:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or ptr == 0:
            continue
        kind, shape = None, tuple(t.shape)
        if t.is_floating_point() and shape in layout.linear:
            kind = "linear"
        elif t.is_floating_point() and shape in layout.embedding:
            kind = "embedding"
        elif t.dtype == torch.uint8 and t.numel() in packed:
            kind = "linear_4bit"
        if kind:
            seen.add(ptr)
            kind = f"profile_{kind}" if ptr in marked and kind != "linear_4bit" else kind
            found[kind] += t.numel() * (2 if kind == "linear_4bit" else 1)
    return {
        kind: n / layout.elements("embedding" if kind.endswith("embedding") else "linear")
        for kind, n in found.items()
    }


class Recorder:
    """IPython hooks: after every cell, the resident copies and whether a graph was built."""

    def __init__(self, chapter: str, path: Path, unsupported: dict[str, str] | None = None):
        self.chapter, self.path, self.layout = chapter, path, BaseLayout.of(tiny_shape())
        self.hooks, self.graph, self.count = None, False, 0
        data = _load(path)
        data[chapter] = {"unsupported": dict(unsupported or {}), "cells": []}
        _save(path, data)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.graph = True  # autograd saved a tensor: this cell builds a graph for backward
        return t

    def pre(self, info=None) -> None:
        self.graph = False
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()

    def post(self, result) -> None:
        if self.hooks is not None:
            self.hooks.__exit__(None, None, None)
            self.hooks = None
        lines = [ln for ln in (result.info.raw_cell or "").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.lstrip().startswith("#")] or lines or [""]
        # nbval does not number the cells it runs: count code cells from set_chapter's (0)
        cell = {"cell": self.count, "label": lines[0].strip()[:60]}
        self.count += 1
        shell = _active[0] if _active else None
        namespace = list(shell.user_ns.values()) if shell is not None else []
        try:  # never disturb the chapter's own output: a failure is recorded, and fails check
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cell |= resident_copies(self.layout, *reachable_tensors(namespace))
        except Exception as err:  # noqa: BLE001
            cell["error"] = f"{type(err).__name__}: {err}"
        cell["graph"] = self.graph
        data = _load(self.path)
        data.setdefault(self.chapter, {"unsupported": {}, "cells": []})["cells"].append(cell)
        _save(self.path, data)


_active: tuple | None = None


def start(chapter: str, unsupported: dict[str, str] | None = None) -> bool:
    """Record this chapter's cells when ``$COURSE_MEMGUARD`` is set and IPython runs it.

    Returns:
        True when the hooks are registered (replacing those of an earlier chapter).
    """
    global _active
    path = measurement_path()
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if path is None or shell is None:
        return False
    stop()
    recorder = Recorder(chapter, path, {**UNSUPPORTED.get(chapter, {}), **(unsupported or {})})
    shell.events.register("pre_run_cell", recorder.pre)
    shell.events.register("post_run_cell", recorder.post)
    _active = (shell, recorder)
    return True


def stop() -> None:
    """Unregister the hooks ``start`` registered (nothing when none are)."""
    global _active
    if _active is not None:
        shell, recorder = _active
        shell.events.unregister("pre_run_cell", recorder.pre)
        shell.events.unregister("post_run_cell", recorder.post)
        if recorder.hooks is not None:
            recorder.hooks.__exit__(None, None, None)
        _active = None


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)  # helpers.atomic: whole or not at all, no .tmp left


def profile_shape(profile) -> ModelShape:
    """The shape of a profile's model: a shape twin's (or any local) config, else the
    published shapes in ``helpers.memory.naive.MODELS`` (``Qwen/Qwen2.5-1.5B-Instruct`` ->
    ``Qwen2.5-1.5B``). Raises KeyError when neither is known."""
    local = Path(profile.model_id) / "config.json"
    if local.is_file():
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(local.parent), profile.name)
    name = profile.model_id.split("/")[-1].removesuffix("-Instruct")
    return planner.MODELS[name]


def training_run(profile, method: str) -> RunSpec:
    """The planner's run for a profile's training settings."""
    return RunSpec(
        method,
        profile.micro_batch_size,
        profile.max_seq_len,
        profile.compute_dtype,
        gradient_checkpointing=profile.gradient_checkpointing,
        lora_r=profile.lora_r,
        target_modules=tuple(profile.target_modules),
    )


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

    @property
    def ok(self) -> bool:
        """A measurement outranks the prediction: a measured run fits when it ran and
        peaked within the budget."""
        if self.measured is not None:
            peak = self.measured["peak_reserved_gib"] or 0.0
            return self.measured["status"] == "ok" and peak * GIB <= self.card_bytes
        if self.error:
            return False
        return self.peak_bytes is None or self.peak_bytes <= self.card_bytes

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
        return f"{'fits' if self.ok else 'DOES NOT FIT'} (planned)"


def evaluate(data: dict, profiles: dict | None = None, measured: dict | None = None) -> list[Row]:
    """Every recorded chapter on every GPU profile (``CARD_GIB``), each with its GPU
    measurement when ``measured`` (default ``data/gpu/measured.json``) holds one for the
    chapter's current version: a measurement outranks the prediction."""
    from helpers.gpucheck import measured as gpu

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
            rows.append(Row(chapter, name, peak, card, where))
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
    parser = argparse.ArgumentParser(prog="python -m helpers.memguard", description=__doc__)
    parser.add_argument("command", choices=["check", "table"])
    parser.add_argument("file", nargs="?", help=f"measurements (default ${ENV} or build/)")
    args = parser.parse_args(argv)
    path = Path(args.file) if args.file else measurement_path() or build_dir() / "memguard.json"
    data = _load(path)
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
