"""Where the course keeps its files.

Everything a chapter reads ships in ``data/``; everything it writes goes under ``build/``
(never committed). ``COURSE_BUILD_DIR`` moves the output folder, for example to Google Drive
on Colab so that checkpoints survive a disconnect.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DATA_DIR = REPO_ROOT / "data"
TINY_MODEL_DIR = DATA_DIR / "tiny-llama"
TASK_DIR = DATA_DIR / "task"
# Held-out documents of the tiny model's pretraining corpus (never trained on): the text that
# chapters use for perplexity.
HELDOUT_TEXT = DATA_DIR / "corpus" / "heldout.txt"
CHAPTERS_DIR = REPO_ROOT / "chapters"


def build_dir() -> Path:
    """The folder for everything the course writes: ``$COURSE_BUILD_DIR`` or ``<repo>/build``."""
    return Path(os.environ.get("COURSE_BUILD_DIR", REPO_ROOT / "build"))


def output_dir(chapter: str) -> Path:
    """A chapter's own output folder (adapters, checkpoints, merged models), created if needed.

    Args:
        chapter: the chapter's stem, e.g. ``"02_lora"``.
    Returns:
        ``build_dir()/outputs/<chapter>``.
    """
    path = build_dir() / "outputs" / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path
