"""The memory guard: predict each chapter's GPU peak from its run on the tiny profile.

While a chapter runs on the tiny profile with ``COURSE_MEMGUARD=<file.json>`` set, the hooks
that ``helpers.report.set_chapter`` registers record, for every cell:

- after it, the copies of the base model's weights still alive, by storage kind: unquantized
  (16/32-bit tensors with the shape of a decoder linear weight, or of the embeddings/head) and
  4-bit (uint8 codes, two per byte, of a linear weight), each as multiples of the base model's;
- inside it (``InsideCell``, a torch dispatch mode), what the cell allocated and freed before
  it ended: temporary weight copies, and tensors over the vocabulary (logits, log-probabilities)
  with the positions they cover and the tokens and window of the forwards that made them;
- whether it ran a model's forward pass that built an autograd graph (a training step, or a
  gradient; not a toy's, not the planner's own measurement of a fixed shape): then the
  planner's training terms (gradients, optimizer state, saved activations, backward's
  workspace) for the profile's run are added.

Every cell is scaled to every GPU profile (``predict_parts``: the profile's model and dtype;
unquantized copies at the compute dtype, 4-bit copies as NF4; vocabulary tensors in fp32 at the
profile's vocabulary and window), and the live bytes are multiplied by one allocator factor,
``RESERVED_PER_ALLOCATED``, fitted once on the 2026-12-04 GPU measurement. Replayed against that
measurement (tests/test_memguard_measured.py), the prediction flags the four runs that failed
and lands within 15 % of the peak of every run that fit but one (gpu-4gb 04, +46 %: a batch that
follows the profile's micro-batch, which the model does not scale).

``check``'s rule: it exits 1 only when a *planned* peak exceeds the card's budget
(``helpers.hardware.card_budget``) on a profile the chapter claims (profiles in ``UNSUPPORTED``
are skipped, with the reason), or the guard failed to record a cell; a GPU measurement that
still holds (``data/gpu/measured.json`` for the chapter's notebook and ``helpers`` as they are
now, ``helpers.gpucheck.measured``) outranks the prediction: a measured fit clears a planned
overflow, and a measured failure is reported loudly (``FAILED ON A GPU``) without failing the
check. Every verdict says "measured on <gpu>, <date>" or "planned".

    python -m helpers.memguard check [FILE]   # fail (exit 1) with a table of what overflows
    python -m helpers.memguard table [FILE]   # chapter x profile: predicted peak, card, verdict
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import sys
import types
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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
UNSUPPORTED["06_deploy"] = {
    "t4-8b": "the chapter merges the whole model at once: the merged 7B model in float16 is "
    "15.2 GB, more than a T4 and Colab's host memory; it stops on t4-8b"
}
UNSUPPORTED["07_two_gpus"] = {"t4-8b": "the chapter plans and runs t4x2 (1.5B); it stops on t4-8b"}
UNSUPPORTED["08_your_data"] = {
    name: "run on the tiny profile only so far: its 4-bit path (SFTTrainer and packing on an NF4 "
    "base, the merge for chapter 06's export) has never run; it stops on GPU profiles"
    for name in ("t4", "t4-8b", "t4x2", "p100", "gpu-4gb", "gpu-bf16")
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


# Modules whose tensors keep their size on every profile: the memory planner's measurement
# builds a model of an explicit shape (chapter 04 measures the tiny model on any device).
FIXED_SIZE_MODULES = frozenset({"helpers.memory.library"})


def _fixed_size() -> bool:
    """Whether the op being recorded runs inside a ``FIXED_SIZE_MODULES`` function."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") in FIXED_SIZE_MODULES:
            return True
        frame = frame.f_back
    return False


class InsideCell(TorchDispatchMode):
    """What a cell allocates and frees before it ends: every fresh storage an ATen op returns
    (not a view of its inputs), followed until it is freed.

    Only two kinds of transient are kept, the two that grow with the profile's model: tensors
    shaped like a base weight (a temporary copy of the model, or of part of it) and tensors
    over the vocabulary (logits, log-probabilities). A copy made explicitly to the CPU
    (``.to("cpu")``) is host memory on a GPU profile and is not counted, nor are tensors made
    by ``FIXED_SIZE_MODULES`` (a model of an explicit shape, the same on every profile); a cell
    that built a graph gets the planner's training terms for what backward holds. ``summary``
    replays the events: the most of each kind alive at once among the tensors freed before the
    cell ends (what survives is in the end state).
    """

    def __init__(self, layout: BaseLayout, vocab_size: int, known: set[int] = frozenset()):
        super().__init__()
        self.known = set(known)  # storages alive before the cell, or already looked at
        self.layout, self.vocab = layout, vocab_size
        self.packed = {o * i // 2 for o, i in layout.linear}
        self.kinds: dict[int, tuple[str, float]] = {}  # storage pointer -> (kind, amount)
        self.events: list[tuple[int, str, float]] = []  # (pointer, kind, +amount or -amount)
        self.tokens = 0  # the most tokens behind one forward's input ids (their storage)
        self.window = 0  # the longest sequence one forward saw
        self.unreadable = 0  # ops whose tensors the guard could not read (not followed)

    def _kind(self, t: torch.Tensor, host: bool) -> tuple[str, float] | None:
        shape = tuple(t.shape)
        if not t.is_floating_point():
            if t.dtype == torch.uint8 and t.numel() in self.packed:
                return "linear_4bit", 2 * t.numel() / self.layout.elements("linear")
            return None
        if host:
            return None  # an explicit copy to host memory (helpers' swapped_weights)
        if shape in self.layout.linear:
            return "linear", t.numel() / self.layout.elements("linear")
        if shape in self.layout.embedding:
            return "embedding", t.numel() / self.layout.elements("embedding")
        if t.dim() >= 2 and shape[-1] == self.vocab:
            return "vocab", t.numel() / self.vocab  # positions
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:  # never disturb the chapter: a tensor the guard cannot read is not followed
            self._see(func, args, kwargs, out)
        except Exception:  # noqa: BLE001 (e.g. a storage-less tensor subclass, FSDP's DTensor)
            self.unreadable += 1
        return out

    def _see(self, func, args, kwargs, out) -> None:
        if func is torch.ops.aten.embedding.default and not _fixed_size():  # a forward's tokens
            ids = args[1]
            stream = ids.untyped_storage().nbytes() // ids.element_size()
            self.tokens = max(self.tokens, ids.numel(), stream)  # the stream the batch views
            self.window = max(self.window, ids.shape[-1] if ids.dim() else 0)
        host = func is torch.ops.aten._to_copy.default and (kwargs or {}).get("device") is not None
        given = [
            t
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and not t.is_sparse
        ]
        ptrs = [t.untyped_storage().data_ptr() for t in given]
        inputs = set(ptrs)
        for t, ptr in zip(given, ptrs, strict=True):
            if ptr not in self.known:  # a weight this cell loaded (not made by an op): follow it
                self.known.add(ptr)
                self._follow(t, ptr, self._kind(t, False), inputs=True)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.is_sparse:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr == 0 or ptr in inputs or ptr in self.kinds:
                continue  # a view, an in-place result, or a storage already followed
            self.known.add(ptr)
            self._follow(t, ptr, self._kind(t, host))

    def _follow(self, t: torch.Tensor, ptr: int, kind, inputs: bool = False) -> None:
        if kind is None or (inputs and kind[0] == "vocab") or _fixed_size():
            return
        self.kinds[ptr] = kind
        self.events.append((ptr, kind[0], kind[1]))
        # the storage, not this Python tensor: a parameter or a view may outlive it
        weakref.finalize(t.untyped_storage(), self._release, ptr)

    def _release(self, ptr: int) -> None:
        self.known.discard(ptr)  # the allocator may hand the address to a new storage
        kind, amount = self.kinds.pop(ptr)
        self.events.append((ptr, kind, -amount))

    def summary(self) -> dict:
        """``inside``: per kind, the most alive at once among tensors freed within the cell
        (copies of the base weights; for ``vocab``, positions summed over the tensors alive at
        once), ``vocab_rows`` (the positions of the largest single such tensor), ``tokens``
        (the longest token stream a forward's input ids were cut from) and ``window`` (the
        longest sequence a forward saw)."""
        alive = set(self.kinds)
        now = dict.fromkeys(("linear", "embedding", "linear_4bit", "vocab"), 0.0)
        most, rows = dict(now), 0.0
        for ptr, kind, amount in self.events:
            if ptr in alive:
                continue
            now[kind] += amount
            most[kind] = max(most[kind], now[kind])
            if kind == "vocab":
                rows = max(rows, amount)
        return {**{k: round(v, 4) for k, v in most.items()}, "vocab_rows": rows,
                "tokens": self.tokens, "window": self.window,
                "unreadable": self.unreadable}  # fmt: skip


def _storages(tensors) -> list[int]:
    """The storage pointers of ``tensors`` that have one (a tensor subclass may not)."""
    ptrs = []
    for t in tensors:
        try:
            ptrs.append(t.untyped_storage().data_ptr())
        except Exception:  # noqa: BLE001, S112
            continue
    return ptrs


class Recorder:
    """IPython hooks: after every cell, the resident copies and whether a graph was built;
    inside every cell, its transients (``InsideCell``)."""

    def __init__(self, chapter: str, path: Path, unsupported: dict[str, str] | None = None):
        self.chapter, self.path, self.layout = chapter, path, BaseLayout.of(tiny_shape())
        self.hooks, self.graph, self.count, self.inside = None, False, 0, None
        self.vocab = json.loads((TINY_MODEL_DIR / "config.json").read_text())["vocab_size"]
        data = _load(path)
        data[chapter] = {"unsupported": dict(unsupported or {}), "cells": []}
        _save(path, data)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # autograd saved a tensor: this cell builds a graph for backward (not the planner's
        # own measurement of a model of fixed shape)
        self.graph = self.graph or not _fixed_size()
        return t

    def pre(self, info=None) -> None:
        self.graph = False
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        shell = _active[0] if _active else None
        namespace = list(shell.user_ns.values()) if shell is not None else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alive = set(_storages(reachable_tensors(namespace)[0]))
        self.inside = InsideCell(self.layout, self.vocab, alive)
        self.inside.__enter__()

    def post(self, result) -> None:
        inside = None
        if self.inside is not None:
            self.inside.__exit__(None, None, None)
            inside, self.inside = self.inside, None
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
        if inside is not None:
            gc.collect()  # what the cell dropped is freed now, not at some later collection
            cell["inside"] = inside.summary()
            # a graph without a model's forward (no embedding lookup) is a toy's: no training
            cell["graph"] = self.graph and inside.window > 0
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
        if recorder.inside is not None:
            recorder.inside.__exit__(None, None, None)
        if recorder.hooks is not None:
            recorder.hooks.__exit__(None, None, None)
        _active = None


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


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


# What the CUDA caching allocator reserves per byte of live tensors at a chapter's peak: the
# median of max_memory_reserved / max_memory_allocated over the nine runs that completed in
# the 2026-12-04 measurement (data/gpu/measured-2026-12-04.json: 1.02 to 1.41, median 1.13);
# fitted once, for every chapter and profile.
RESERVED_PER_ALLOCATED = 1.13
# Logits are scored in fp32 on every profile (the course's losses and log-probabilities upcast
# them: ``.float()`` before cross-entropy); the 16-bit head output is freed right after.
VOCAB_BYTES = 4


@functools.cache
def _tiny_layers() -> int:
    return tiny_shape().num_layers


def _weights(copies: dict, profile, layout: BaseLayout, b: int) -> float:
    """Bytes of the base-model copies in ``copies`` on ``profile``."""
    four_bit, unquantized = copies["linear_4bit"], copies["linear"]
    if profile.load_in_4bit:
        four_bit += copies["profile_linear"]
    else:
        unquantized += copies["profile_linear"]
    embeddings = copies["embedding"] + copies["profile_embedding"]
    total = b * (
        unquantized * layout.elements("linear") + embeddings * layout.elements("embedding")
    )
    nf4 = sum(planner._nf4_bytes(o * i, True) * n for (o, i), n in layout.linear.items())
    return total + four_bit * nf4


def _window(inside: dict, profile) -> int:
    """The sequence length of the cell's forwards on ``profile``: the longest the tiny run saw
    (a shape twin ships the tiny tokenizer: a text is the same tokens on every profile), or the
    profile's own ``max_seq_len`` where the tiny run's filled the tiny profile's window (cut)."""
    from helpers.profiles import PROFILES

    seen, tiny_window = inside.get("window", 0), PROFILES["tiny"].max_seq_len
    return profile.max_seq_len if not seen or seen >= tiny_window else seen


def _vocab_bytes(inside: dict, profile, shape: ModelShape) -> float:
    """The cell's transient tensors over the vocabulary, scaled to the profile.

    Positions follow the profile's window where the tiny run's forwards filled the tiny
    profile's (``max_seq_len``) and the same tokens otherwise (a shape twin ships the tiny
    tokenizer: a text is the same tokens on every profile), never more than the token stream
    the forwards were cut from; every such tensor is held in fp32 (``VOCAB_BYTES``).
    """
    rows = inside.get("vocab_rows", 0.0)
    if not rows:
        return 0.0
    from helpers.profiles import PROFILES

    tiny_window = PROFILES["tiny"].max_seq_len  # the window of the recorded run
    grow = profile.max_seq_len / tiny_window if inside.get("window", 0) >= tiny_window else 1.0
    positions = min(rows * grow, max(rows, inside.get("tokens", 0)))
    return inside["vocab"] / rows * positions * shape.vocab_size * VOCAB_BYTES


def predict_parts(cell: dict, profile, shape: ModelShape) -> dict[str, int]:
    """The terms of one recorded cell's peak on a GPU running ``profile``, in bytes of live
    tensors (before the allocator's reserve).

    ``weights``: the base-model copies alive at the cell's end (unquantized at the profile's
    compute dtype, 4-bit as NF4 with double quantization). ``transient_weights``: copies made
    and freed inside the cell (``InsideCell``): up to one layer's worth alive at once counts
    as one layer of the profile's model, more as that share of the whole. ``vocab``: logits and log-probabilities inside
    the cell (``_vocab_bytes``). ``training``: a cell that built a graph
    adds the planner's training terms (gradients, optimizer, saved activations with the loss's
    logits, backward's workspace; LoRA, or QLoRA with the fp32 upcast when 4-bit weights are
    resident) at the profile's micro-batch and the cell's sequence length (``_window``); where
    the cell's largest forward over the vocabulary (a full-batch gradient, an evaluation inside
    the training loop) holds more than the training terms, that replaces them: both stand for
    the same activations and logits, which do not coexist.
    """
    layout, b = BaseLayout.of(shape), DTYPE_BYTES[profile.compute_dtype]
    copies = {kind: cell.get(kind, 0.0) for kind in COPY_KINDS}
    inside = cell.get("inside") or {}
    extra = dict.fromkeys(COPY_KINDS, 0.0) | {k: inside.get(k, 0.0) for k in COPY_KINDS[:3]}
    tiny_layers = _tiny_layers()
    for kind in ("linear", "linear_4bit"):
        # at most one layer's weights alive at once: a layer-by-layer pass (dequantize, quantize,
        # round-trip), one layer of the profile's model; more: that share of the whole model
        if extra[kind] * tiny_layers <= 1:
            extra[kind] *= tiny_layers / shape.num_layers
    parts = {
        "weights": _weights(copies, profile, layout, b),
        "transient_weights": _weights(extra, profile, layout, b),
        "vocab": _vocab_bytes(inside, profile, shape),
        "training": 0.0,
    }
    if cell["graph"]:
        four_bit = copies["linear_4bit"] + (copies["profile_linear"] if profile.load_in_4bit else 0)
        method = "qlora" if four_bit >= 0.5 else "lora"
        run = training_run(profile, method).with_(seq_len=_window(inside, profile))
        plan = planner.training_memory(shape, run, device="cpu")
        parts["training"] = plan.gradients + plan.optimizer + plan.activations + plan.transient
        if method == "qlora":  # prepare_model_for_kbit_training: the rest in fp32
            parts["training"] += (4 - b) * planner.parameter_counts(shape)["other"]
        if parts["vocab"] > parts["training"]:
            parts["training"] = 0.0
        else:
            parts["vocab"] = 0.0
    return {k: int(v) for k, v in parts.items()}


def predict(cell: dict, profile, shape: ModelShape) -> int:
    """Bytes one recorded cell would reserve at its peak on a GPU running ``profile``: the sum
    of ``predict_parts`` times the allocator's reserve (``RESERVED_PER_ALLOCATED``)."""
    return int(sum(predict_parts(cell, profile, shape).values()) * RESERVED_PER_ALLOCATED)


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
    def planned_ok(self) -> bool:
        """The prediction alone: a skipped profile (one the chapter does not claim) passes;
        a cell the guard failed to record does not."""
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


def predict_rows(
    data: dict, profiles: dict | None = None, unsupported: dict | None = None
) -> list[Row]:
    """Every recorded chapter on every GPU profile, predicted from the tiny run only.

    Args:
        data: the tiny run's record (``Recorder``).
        profiles: the profiles to predict (default: ``helpers.profiles.PROFILES``).
        unsupported: chapter -> {profile: why it is skipped} (default ``UNSUPPORTED``), with
            the skips the record itself carries.
    """
    from helpers.profiles import PROFILES

    profiles = profiles or PROFILES
    skips = UNSUPPORTED if unsupported is None else unsupported
    rows = []
    for chapter in sorted(data):
        cells = data[chapter]["cells"]
        unsupported = {**skips.get(chapter, {}), **data[chapter]["unsupported"]}
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
    if args.command != "check":
        return 0
    measured_bad = [r for r in rows if r.measured is not None and not r.ok]
    if measured_bad:  # loud, but a measurement of an older commit does not fail the check
        print(f"\n{len(measured_bad)} chapter/profile pairs FAILED ON A GPU:", file=sys.stderr)
        for r in measured_bad:
            print(f"  {r.chapter} on {r.profile}: {r.verdict}", file=sys.stderr)
    bad = [r for r in rows if not r.planned_ok and not (r.measured is not None and r.ok)]
    if bad:
        print(f"\n{len(bad)} chapter/profile pairs would overflow their card:", file=sys.stderr)
        for r in bad:
            what = r.reason if r.error else f"cell {r.cell} -> predicted {r.peak_bytes / GIB:.2f}"
            what += "" if r.error else f" GiB > {r.card_bytes / GIB:.2f} GiB (planned)"
            print(f"  {r.chapter} on {r.profile}: {what}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
