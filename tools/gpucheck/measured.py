"""What ``data/gpu/measured.json`` says about one chapter on one profile, when it still holds.

A measurement holds for a chapter while the chapter's notebook is unchanged since the
measured commit (``git diff --quiet <commit> -- chapters/<stem>.ipynb``); without git, or
when git does not know the commit, it is taken as holding (its label names the commit).
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

from helpers.paths import CHAPTERS_DIR, DATA_DIR, REPO_ROOT

MEASURED = DATA_DIR / "gpu" / "measured.json"


@functools.cache
def _unchanged(commit: str, notebook: str) -> bool:
    cmd = ["git", "diff", "--quiet", commit.removesuffix("+dirty"), "--", notebook]
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    return done.returncode != 1  # 0: unchanged; 128: git cannot tell


def load(path: Path | None = None) -> dict:
    """The measured document (empty when there is none or it is not JSON)."""
    try:
        return json.loads(Path(path or MEASURED).read_text())
    except (OSError, ValueError):
        return {}


def lookup(profile: str, chapter_stem: str, doc: dict | None = None) -> dict | None:
    """The measured run of ``chapter_stem`` (e.g. "03_qlora") on ``profile`` with the
    document's ``gpu``, ``date`` and ``commit`` added; None when not measured, or measured on
    a version of the chapter that has changed since."""
    doc = load() if doc is None else doc
    number = chapter_stem.split("_")[0]
    for run in doc.get("runs", []):
        if run.get("profile") == profile and run.get("chapter") == number:
            notebook = (CHAPTERS_DIR / f"{chapter_stem}.ipynb").relative_to(REPO_ROOT)
            commit = str(run.get("commit") or doc.get("commit", ""))  # a re-run names its own
            if not _unchanged(commit, str(notebook)):
                return None
            return {**run, "gpu": doc.get("gpu"), "date": doc.get("date"), "commit": commit}
    return None
