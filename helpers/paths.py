"""Where the course keeps its files.

Everything a chapter reads ships in ``data/``; everything it writes goes under ``build/``
(never committed). ``COURSE_BUILD_DIR`` moves the output folder, for example to Google Drive
on Colab so that checkpoints survive a disconnect.

The course root is found once, in this order: ``$COURSE_ROOT``; the folder above ``helpers/``
when it holds ``data/`` (a clone, an editable install, Colab's fetched copy); the copy of
``data/`` that ``pip install .`` puts under ``<prefix>/share/budget-finetuning-course`` (Binder
and any non-editable install, see pyproject.toml).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Where pyproject.toml's [tool.setuptools.data-files] installs data/ (relative to the prefix).
SHARE_SUBDIR = Path("share") / "budget-finetuning-course"
_MARKER = Path("data") / "tiny-llama" / "config.json"


def _candidates() -> list[Path]:
    """Folders that may hold the course's ``data/``, in order of preference."""
    found = [PACKAGE_DIR.parent]
    prefixes = [sys.prefix, sysconfig.get_paths().get("data", sys.prefix)]
    user_base = sysconfig.get_config_var("userbase")
    if user_base:  # pip install --user
        prefixes.append(user_base)
    found += [Path(p) / SHARE_SUBDIR for p in dict.fromkeys(prefixes)]
    return found


def find_course_root() -> Path:
    """The folder whose ``data/`` this course reads (see the module docstring).

    Returns:
        ``$COURSE_ROOT`` if set (not checked here), else the first candidate that holds the tiny
        model; if none does, the folder above ``helpers/``, so that an error names a real path.
    """
    if os.environ.get("COURSE_ROOT"):
        return Path(os.environ["COURSE_ROOT"]).expanduser().resolve()
    for root in _candidates():
        if (root / _MARKER).is_file():
            return root
    return PACKAGE_DIR.parent


REPO_ROOT = find_course_root()
DATA_DIR = REPO_ROOT / "data"
TINY_MODEL_DIR = DATA_DIR / "tiny-llama"
TASK_DIR = DATA_DIR / "task"
# Held-out documents of the tiny model's pretraining corpus (never trained on): the text that
# chapters use for perplexity.
HELDOUT_TEXT = DATA_DIR / "corpus" / "heldout.txt"
# Chapters ship only with a clone (the course's own folder, even when data/ comes from share/).
CHAPTERS_DIR = PACKAGE_DIR.parent / "chapters"


def missing_data() -> list[Path]:
    """The files a chapter needs that are not there (empty when the course is complete)."""
    needed = [TINY_MODEL_DIR / "config.json", TINY_MODEL_DIR / "model.safetensors"]
    needed += [TINY_MODEL_DIR / "tokenizer.json", TASK_DIR, HELDOUT_TEXT]
    return [p for p in needed if not p.exists()]


def build_dir() -> Path:
    """The folder for everything the course writes.

    Returns:
        ``$COURSE_BUILD_DIR`` if set; else ``<course>/build`` in a clone, or
        ``~/budget-finetuning-course/build`` for an installed course (site-packages and the
        installed ``share/`` may be read-only).
    """
    if os.environ.get("COURSE_BUILD_DIR"):
        return Path(os.environ["COURSE_BUILD_DIR"])
    if REPO_ROOT == PACKAGE_DIR.parent:
        return REPO_ROOT / "build"
    return Path.home() / "budget-finetuning-course" / "build"


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
