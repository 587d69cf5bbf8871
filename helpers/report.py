"""Record a chapter's headline numbers in ``build/results.json``.

Each chapter calls ``set_chapter("02_lora")`` once, then ``record(name, value)`` for every
number it wants in the course table. Values come from the run; nothing is typed in by hand.
``COURSE_RESULTS`` moves the file (the test suite writes elsewhere, so tests never overwrite
the results of ``make course``).

Several processes may record into one file at once (chapters run in parallel): each ``record``
reads, updates and rewrites the file while holding a lock file beside it (``filelock``), and
the rewrite is atomic (``helpers.atomic``), so no number is lost and no reader sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from filelock import FileLock

from helpers.atomic import write_json
from helpers.paths import build_dir

LOCK_TIMEOUT_S = 120  # a record takes milliseconds: two minutes means a stuck process

_chapter: str | None = None


def results_path() -> Path:
    return Path(os.environ.get("COURSE_RESULTS", build_dir() / "results.json"))


def set_chapter(stem: str, unsupported: dict[str, str] | None = None) -> None:
    """Name the chapter whose numbers the following ``record`` calls store.

    With ``$COURSE_MEMGUARD`` set (the test suite sets it), also start the memory guard's
    per-cell record of this chapter (``helpers.memory.resident``).

    Args:
        stem: the chapter's file name without ``.ipynb``, e.g. ``"02_lora"``.
        unsupported: profiles the chapter stops on at its first cell, with the reason
            (``{"t4-8b": "..."}``): the memory guard skips them.
    """
    global _chapter
    _chapter = stem
    if os.environ.get("COURSE_MEMGUARD"):
        from helpers.memory import resident

        resident.start(stem, unsupported)


def load_results(path: Path | None = None) -> dict:
    """All recorded numbers: ``{chapter: {metric: value}}`` (empty when none yet)."""
    path = path or results_path()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to start afresh") from err


def _plain(value):
    """A JSON-ready copy of a number, bool, string or a dict of them (tensors and numpy
    scalars included)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    raise TypeError(f"record() takes a number, bool, string or dict, got {type(value).__name__}")


def record(name: str, value):
    """Store one number for the current chapter, print it, and return it unchanged."""
    if _chapter is None:
        raise RuntimeError("Call helpers.report.set_chapter('<chapter stem>') before record().")
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S):
        results = load_results(path)
        results.setdefault(_chapter, {})[name] = _plain(value)
        write_json(path, results, indent=2, sort_keys=True)
    print(f"recorded {name} = {_plain(value)}")
    return value
