"""Run chapters side by side under per-process GPU caps and read back what each used.

Each run gets a folder ``<work>/<profile>_<chapter>/``: the chapter copy with a first cell
that registers an IPython ``post_run_cell`` hook (``HOOK``), papermill's log, the hook's
``gpu.jsonl`` (one record per cell) and the chapter's ``results.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.gpucheck.jobs import parameters

# After every cell: max_memory_reserved (GiB), the cell's first line, its error if any.
HOOK = """import json as _gj, os as _go, time as _gt
def _gpu_rec(result, _f=_go.environ["GPU_LOG"], _t0=_gt.time()):
    import torch
    err = result.error_in_exec or result.error_before_exec
    rec = {"t": round(_gt.time() - _t0, 1), "cell": (result.info.raw_cell or "")[:70],
           "err": f"{type(err).__name__}: {str(err)[:300]}" if err else None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["reserved"] = torch.cuda.max_memory_reserved() / 2**30
    with open(_f, "a") as fh:
        fh.write(_gj.dumps(rec) + "\\n")
get_ipython().events.register("post_run_cell", _gpu_rec)
"""


@dataclass
class Run:
    """One chapter on one profile, running or done."""

    profile: str
    chapter: str
    budget_gib: float
    folder: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    timed_out: bool = False


def chapter_path(root: Path, chapter: str) -> Path:
    """``chapters/<chapter>_*.ipynb``; FileNotFoundError names the chapter when absent."""
    found = sorted((root / "chapters").glob(f"{chapter}_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no chapter {chapter} in {root / 'chapters'}")
    return found[0]


def with_hook(notebook: dict) -> dict:
    """A copy of a notebook with the recording hook as its first cell."""
    cell = {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
            "source": HOOK}  # fmt: skip
    return {**notebook, "cells": [cell, *notebook["cells"]]}


def start(run: Run, root: Path, twins: Path) -> Run:
    """Write the chapter copy and start papermill on it (stdout/stderr into papermill.log)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    nb = json.loads(chapter_path(root, run.chapter).read_text())
    (run.folder / "in.ipynb").write_text(json.dumps(with_hook(nb)))
    env = dict(
        os.environ,
        GPU_LOG=str(run.folder / "gpu.jsonl"),
        COURSE_RESULTS=str(run.folder / "results.json"),
        COURSE_BUILD_DIR=str(run.folder / "build"),
        COURSE_GPU_MEMORY_GIB=f"{run.budget_gib:.2f}",
        COURSE_MODEL_DIR=str(twins / run.profile),
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS="2",
    )
    params = json.dumps(parameters(run.profile, run.chapter))
    cmd = [sys.executable, "-m", "papermill", str(run.folder / "in.ipynb"),
           str(run.folder / "out.ipynb"), "-y", params, "-k", "python3",
           "--cwd", str(root / "chapters"), "--no-progress-bar"]  # fmt: skip
    log = open(run.folder / "papermill.log", "w")  # noqa: SIM115 (the child owns it)
    run.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    run.started = time.time()
    return run


def wait_all(runs: list[Run], per_run_s: float, deadline: float, poll_s: float = 2.0) -> None:
    """Wait for every run; kill one that passes ``per_run_s`` or the global ``deadline``."""
    while any(r.process and r.process.poll() is None for r in runs):
        now = time.time()
        for r in runs:
            if r.process and r.process.poll() is None:
                if now - r.started > per_run_s or now > deadline:
                    r.process.kill()
                    r.process.wait()
                    r.timed_out = True
        time.sleep(poll_s)
