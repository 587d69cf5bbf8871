"""The set-up cell that opens every chapter, kept here once.

A chapter cannot import ``helpers`` before the course is on the machine, so the set-up cell is
plain Python; its text lives in ``SETUP_CELL`` and ``python -m helpers.notebook sync`` writes
it into every chapter (a test checks that each chapter's cell equals it). The repository
address is the one constant ``COURSE_REPO_URL``.
"""

from __future__ import annotations

import sys

import nbformat

from helpers.paths import CHAPTERS_DIR

COURSE_REPO_URL = "https://github.com/budget-finetuning/course"
# What a Colab or Kaggle image may lack; torch is never installed or upgraded here.
NEEDED_PACKAGES = (
    "bitsandbytes",
    "peft",
    "transformers",
    "accelerate",
    "datasets",
    "safetensors",
    "ipywidgets",
)

_NEEDED_LINES = "\n".join(f'            "{name}",' for name in NEEDED_PACKAGES)
SETUP_CELL = f'''\
# Set-up, the same in every chapter. In a clone of the course (make lab, Binder, CI) it does
# nothing. On Colab or Kaggle it installs only what the image lacks (never torch) and fetches
# the course (code, tiny model and data) beside the notebook.
import importlib.util
import os
import subprocess
import sys

COURSE_REPO_URL = "{COURSE_REPO_URL}"
if importlib.util.find_spec("helpers") is None:
    if os.path.isdir(os.path.join("..", "helpers")):  # opened from chapters/ in a clone
        sys.path.insert(0, os.path.abspath(".."))
    else:
        needed = [
{_NEEDED_LINES}
        ]
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])
        if not os.path.isdir("course"):
            subprocess.check_call(["git", "clone", "--depth", "1", COURSE_REPO_URL, "course"])
        sys.path.insert(0, os.path.abspath("course"))'''


def setup_cells(nb) -> list:
    """The code cells tagged ``setup`` in a notebook."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and "setup" in c.get("metadata", {}).get("tags", [])
    ]


def sync(paths=None) -> list[str]:
    """Write SETUP_CELL into the set-up cell of each chapter; return the chapters changed."""
    changed = []
    for path in paths or sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = setup_cells(nb)
        if len(cells) != 1:
            raise ValueError(f"{path}: expected one code cell tagged 'setup', found {len(cells)}")
        if cells[0].source != SETUP_CELL:
            cells[0].source, cells[0].outputs = SETUP_CELL, []
            nbformat.write(nb, path)
            changed.append(str(path))
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python -m helpers.notebook sync")
    print("\n".join(sync()) or "every chapter's set-up cell is up to date")
