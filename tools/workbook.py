"""The learners' workbook: a copy of every chapter to type into, generated from ``chapters/``.

    python -m tools.workbook sync    # (re)write workbook/NN_name.ipynb from chapters/
    python -m tools.workbook check   # exit 1 when a copy is out of date, missing or extra

A workbook notebook is its chapter with the exercise cells' outputs cleared (the stubs stay
stubs: a chapter never carries a solution), its launch badges pointing at the workbook copy, and
one line that links back to the chapter. Everything else, stored outputs and plots included, is
as in the chapter, so a learner can compare as they go. The set-up cell finds the course in the
folder above (``course_above``), and chapters read data through ``helpers.paths``, so a
workbook notebook runs from ``workbook/`` as its chapter does from ``chapters/``. The solutions
stay in ``solutions/`` for the instructor; a test checks that none of their code is in here.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
from pathlib import Path

import nbformat

from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR
from tools.badges import badges

WORKBOOK_DIR = PACKAGE_DIR.parent / "workbook"
SOLUTIONS_DIR = PACKAGE_DIR.parent / "solutions"
_HEADING = re.compile(r"^(#{1,6})\s")
_EXERCISES = re.compile(r"^(#{1,6})\s.*\bExercises\b")


def exercise_cells(nb) -> list[int]:
    """Indices of the code cells inside an exercises section: after a markdown heading line
    ``## ... Exercises`` and before the next heading of the same or a higher level (which may
    sit further down a markdown cell)."""
    found, level = [], None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if level is not None:
                found.append(i)
            continue
        for line in cell.source.split("\n"):
            heading, opens = _HEADING.match(line), _EXERCISES.match(line)
            if opens:
                level = len(opens.group(1))
            elif heading and level is not None and len(heading.group(1)) <= level:
                level = None
    return found


def _retitle(nb, chapter: str) -> None:
    """Point the first markdown cell's badges at the workbook copy and link the chapter."""
    cell = next(c for c in nb.cells if c.cell_type == "markdown")
    note = (
        f"*Workbook copy of [the chapter](../chapters/{chapter}): type your answers into the "
        "exercise cells. Your instructor has the solutions.*"
    )
    lines = [
        badges(chapter, "workbook") if line == badges(chapter) else line
        for line in cell.source.split("\n")
    ]
    cell.source = "\n".join([lines[0], "", note, *lines[1:]])


def workbook_notebook(chapter_path: Path):
    """The workbook copy of one chapter (see the module docstring).

    Raises:
        ValueError: the chapter uses exercise checkers outside an exercises section.
    """
    nb = copy.deepcopy(nbformat.read(chapter_path, as_version=4))
    cells = exercise_cells(nb)
    if not cells and any("helpers.exercises" in c.source for c in nb.cells):
        raise ValueError(f"{chapter_path}: exercises without a markdown heading '## ... Exercises'")
    _retitle(nb, Path(chapter_path).name)
    for i in cells:
        nb.cells[i].outputs, nb.cells[i].execution_count = [], None
    return nb


def chapter_paths(chapters_dir: Path = CHAPTERS_DIR) -> list[Path]:
    """Every chapter on disk now, in order."""
    return sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))


def out_of_date(chapters_dir: Path = CHAPTERS_DIR, out_dir: Path = WORKBOOK_DIR) -> list[str]:
    """What ``sync`` would change: ``missing: ...``, ``out of date: ...``, ``extra: ...``."""
    problems, names = [], set()
    for chapter in chapter_paths(chapters_dir):
        names.add(chapter.name)
        target = Path(out_dir) / chapter.name
        if not target.is_file():
            problems.append(f"missing: {target}")
        elif target.read_text() != nbformat.writes(workbook_notebook(chapter)) + "\n":
            problems.append(f"out of date: {target} (run python -m tools.workbook sync)")
    extra = [p for p in Path(out_dir).glob("*.ipynb") if p.name not in names]
    return problems + [f"extra: {p} (its chapter is gone)" for p in sorted(extra)]


def sync(chapters_dir: Path = CHAPTERS_DIR, out_dir: Path = WORKBOOK_DIR) -> list[str]:
    """Write every chapter's workbook copy and remove copies whose chapter is gone.

    Returns:
        The files written or removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for problem in out_of_date(chapters_dir, out_dir):
        kind, path = problem.split(": ", 1)
        path = Path(path.split(" (")[0])
        if kind == "extra":
            path.unlink()
        else:
            nbformat.write(workbook_notebook(Path(chapters_dir) / path.name), path)
        changed.append(str(path))
    return changed


def solution_lines(solutions_dir: Path = SOLUTIONS_DIR, min_chars: int = 20) -> dict[str, str]:
    """Each line of code inside a solution function (docstrings and short lines left out).

    Returns:
        ``{stripped line: "solutions/chNN_x.py:LINE"}``.
    """
    found = {}
    for path in sorted(Path(solutions_dir).glob("ch*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body[1:] if ast.get_docstring(node) else node.body
            for stmt in body:
                for n in range(stmt.lineno, stmt.end_lineno + 1):
                    code = lines[n - 1].split("#")[0].strip()
                    if len(code) >= min_chars:
                        found.setdefault(code, f"{path.name}:{n}")
    return found


def solution_leaks(nb, solutions: dict[str, str]) -> list[str]:
    """Where a notebook shows a solution: a solution's line of code in a code cell, an import
    of ``solutions``, or a hidden "solution" reveal block.

    Returns:
        One line per leak, naming the cell and the solution's file and line.
    """
    leaks = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            if re.search(r"<details[\s\S]*solution", cell.source, re.I):
                leaks.append(f"cell {i}: a solution reveal block")
            continue
        if re.search(r"^\s*(from|import)\s+solutions\b", cell.source, re.M):
            leaks.append(f"cell {i}: imports solutions")
        for line in cell.source.splitlines():
            if line.split("#")[0].strip() in solutions:
                leaks.append(
                    f"cell {i}: {line.strip()!r} is {solutions[line.split('#')[0].strip()]}"
                )
    return leaks


if __name__ == "__main__":
    if sys.argv[1:] == ["sync"]:
        print("\n".join(sync()) or "every workbook notebook is up to date")
    elif sys.argv[1:] == ["check"]:
        stale = out_of_date()
        print("\n".join(stale) or "every workbook notebook is up to date")
        sys.exit(1 if stale else 0)
    else:
        sys.exit("usage: python -m tools.workbook sync|check")
