"""Write the set-up cell, the launch badges and the ``P100_FIX`` parameter into every chapter,
and pin the commit the set-up cell fetches.

    python -m tools.release sync                              # every chapter, README, workbook/
    python -m tools.release pin [--commit C] [--repo URL] [--ref TAG]

``sync`` writes the set-up cell (``helpers.notebook.setup_cell``) into every chapter, the launch
badges (``tools.badges``) into each first markdown cell and README.md, a ``P100_FIX`` line into
each parameters cell, then regenerates ``workbook/`` from the chapters (``tools.workbook``); a
test checks that every chapter is in sync. ``pin`` writes a release's commit (or a fork's
repository and tag) into ``helpers/notebook.py``, where the set-up cell reads them, then syncs.
A release: commit, ``python -m tools.release pin``, commit that, tag it ``COURSE_REF``, push both.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import notebook
from helpers.notebook import setup_cell
from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR
from tools.badges import badges, sync_readme

P100_FIX_LINE = "P100_FIX = False  # True on a Kaggle P100: install torch's cu126 build (sm_60)"


def setup_cells(nb) -> list:
    """The code cells tagged ``setup`` in a notebook."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and "setup" in c.get("metadata", {}).get("tags", [])
    ]


def _sync_badges(nb, chapter: str) -> bool:
    """Put the badge line right under the first markdown cell's title; True if it changed."""
    cell = next(c for c in nb.cells if c.cell_type == "markdown")
    lines = [line for line in cell.source.split("\n") if "[![Open in Colab]" not in line]
    while len(lines) > 1 and lines[1] == "":
        lines.pop(1)  # the blank lines around the old badge line
    new = "\n".join([lines[0], "", badges(chapter), "", *lines[1:]])
    changed, cell.source = new != cell.source, new
    return changed


def _sync_p100_line(nb) -> bool:
    """Add the ``P100_FIX`` parameter to the parameters cell when it lacks one."""
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    if re.search(r"^P100_FIX\s*=", cell.source, flags=re.M):
        return False
    cell.source = cell.source.rstrip("\n") + "\n" + P100_FIX_LINE
    return True


def sync(paths=None) -> list[str]:
    """Write the set-up cell (``setup_cell``), the badges and the P100_FIX parameter into each
    chapter (all of them by default, then README.md's badges too).

    Returns:
        The chapters changed.
    Raises:
        ValueError: a chapter without exactly one code cell tagged ``setup``.
    """
    import nbformat

    changed = []
    if paths is None and sync_readme():
        changed.append(str(PACKAGE_DIR.parent / "README.md"))
    for path in paths or sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = setup_cells(nb)
        if len(cells) != 1:
            raise ValueError(f"{path}: expected one code cell tagged 'setup', found {len(cells)}")
        dirty = _sync_badges(nb, Path(path).name) | _sync_p100_line(nb)
        cell = setup_cell(Path(path).stem)
        if cells[0].source != cell:
            cells[0].source, cells[0].outputs, dirty = cell, [], True
        if dirty:
            nbformat.write(nb, path)
            changed.append(str(path))
    return changed


def pin(commit: str | None = None, repo: str | None = None, ref: str | None = None) -> str:
    """Write the commit the set-up cell fetches (and, for a fork, the repository and the tag)
    into ``helpers/notebook.py`` (where the set-up cell reads them), then sync every chapter and
    the workbook in a fresh process.

    Args:
        commit: a full commit id; default this clone's HEAD, refused while tracked files have
            uncommitted changes (the pinned commit must hold the code the set-up cell runs).
        repo: a new ``COURSE_REPO_URL`` (``https://github.com/OWNER/NAME``), for a fork.
        ref: a new ``COURSE_REF``: the tag the badges and the website open.
    Returns:
        The commit pinned.
    Raises:
        ValueError: a commit that is not a full id, or a repository URL that is not GitHub's.
        RuntimeError: uncommitted changes, or git could not read HEAD.
    """
    git = ["git", "-C", str(PACKAGE_DIR.parent)]
    if commit is None:
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        if dirty.returncode or dirty.stdout.strip():
            raise RuntimeError(f"commit first: {dirty.stdout.strip() or dirty.stderr.strip()}")
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        if commit.returncode:
            raise RuntimeError(f"git rev-parse HEAD: {commit.stderr.strip()}")
        commit = commit.stdout.strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit {commit!r}: expected a full 40-hex commit id")
    if repo is not None and not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"repo {repo!r}: expected https://github.com/OWNER/NAME")
    pinned = Path(notebook.__file__)
    source = pinned.read_text()
    for name, value in (("COURSE_COMMIT", commit), ("COURSE_REPO_URL", repo), ("COURSE_REF", ref)):
        if value is not None:
            source = re.sub(
                rf'^{name} = "[^"]*"', f'{name} = "{value}"', source, count=1, flags=re.M
            )
    pinned.write_text(source)
    subprocess.run(
        [sys.executable, "-m", "tools.release", "sync"], check=True, cwd=PACKAGE_DIR.parent
    )
    return commit


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.release")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="write the set-up cell, badges and P100_FIX into every chapter")
    p_pin = sub.add_parser("pin", help="pin the commit the set-up cell fetches, then sync")
    p_pin.add_argument("--commit", help="a full commit id (default: HEAD, which must be clean)")
    p_pin.add_argument("--repo", help="a fork's https://github.com/OWNER/NAME")
    p_pin.add_argument("--ref", help="the tag the badges and the website open")
    args = parser.parse_args(argv)
    if args.command == "pin":
        print(f"pinned {pin(args.commit, args.repo, args.ref)}")
        return 0
    print("\n".join(sync()) or "every chapter's set-up cell is up to date")
    from tools import workbook  # the workbook copies follow the chapters they were made from

    print("\n".join(workbook.sync()) or "every workbook notebook is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
