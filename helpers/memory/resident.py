"""What stays resident after each cell of a chapter: the per-cell record of the memory guard.

While a chapter runs in IPython with ``$COURSE_MEMGUARD=<file.json>`` set (the test suite sets
it), ``helpers.report.set_chapter`` calls ``start``, which registers two IPython hooks; after
every cell they append to the file what stays resident:

- copies of the base model's weights still alive, by storage kind: unquantized (16/32-bit
  tensors with the shape of a decoder linear weight, or of the embeddings/head) and 4-bit
  (uint8 codes, two per byte, of a linear weight), each as multiples of the base model's;
- whether the cell ran a forward pass that built an autograd graph (a training step, or a
  gradient).

The course's memory guard (``python -m tools.memory_guard check``) scales these records to
every GPU profile; nothing here predicts or judges.
"""

from __future__ import annotations

import gc
import json
import os
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.atomic import write_json
from helpers.memory import ModelShape
from helpers.memory import naive as planner
from helpers.paths import REPO_ROOT, TINY_MODEL_DIR

ENV = "COURSE_MEMGUARD"
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
        data = load_record(path)
        data[chapter] = {"unsupported": dict(unsupported or {}), "cells": []}
        save_record(path, data)

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
        data = load_record(self.path)
        data.setdefault(self.chapter, {"unsupported": {}, "cells": []})["cells"].append(cell)
        save_record(self.path, data)


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
    recorder = Recorder(chapter, path, unsupported)
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


def load_record(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_record(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)  # helpers.atomic: whole or not at all, no .tmp left
