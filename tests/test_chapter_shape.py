"""The book's shape: chapters numbered 00, 01, ... without a gap, short code cells (the set-up
cell aside), a short opening cell, and a first cell that says what the chapter needs first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.paths import CHAPTERS_DIR

MAX_CELL_LINES = 30  # a code cell, the set-up cell aside
MAX_OPENING_LINES = 15  # the first code cell after the set-up cell
NEEDS = "**What you need first.**"  # in the first cell of every chapter but 00
CHAPTERS = sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb"))


def _code_cells(path: Path) -> list[tuple[int, list[str], str]]:
    """``(cell index, tags, source)`` of each code cell."""
    cells = json.loads(path.read_text())["cells"]
    return [
        (i, c.get("metadata", {}).get("tags", []), "".join(c["source"]))
        for i, c in enumerate(cells)
        if c["cell_type"] == "code"
    ]


def long_cells(path: Path) -> list[str]:
    """Code cells over ``MAX_CELL_LINES`` lines (the set-up cell aside), as 'cell N: L lines'."""
    return [
        f"cell {i}: {len(source.splitlines())} lines"
        for i, tags, source in _code_cells(path)
        if "setup" not in tags and len(source.splitlines()) > MAX_CELL_LINES
    ]


def opening_cell(path: Path) -> tuple[int, str]:
    """The first code cell after the one tagged ``setup``."""
    cells = _code_cells(path)
    setup = [k for k, (_, tags, _) in enumerate(cells) if "setup" in tags]
    if len(setup) != 1 or setup[0] + 1 >= len(cells):
        raise ValueError(f"{path.name}: expected one set-up cell followed by code")
    index, _, source = cells[setup[0] + 1]
    return index, source


def numbering_gaps(names: list[str]) -> list[str]:
    """What is wrong with the numbers of these chapter file names (empty when 00, 01, ...)."""
    numbers = [int(re.match(r"(\d\d)_", name).group(1)) for name in names]
    expected = list(range(len(numbers)))
    return [] if numbers == expected else [f"numbers {numbers}, expected {expected}"]


def test_chapters_are_numbered_without_gaps():
    names = [p.name for p in CHAPTERS]
    assert len(names) >= 10, names
    assert not numbering_gaps(names)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_cells_are_short(path):
    assert not long_cells(path), f"{path.name}: over {MAX_CELL_LINES} lines: {long_cells(path)}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_opening_cell_is_short(path):
    index, source = opening_cell(path)
    lines = len(source.splitlines())
    assert lines <= MAX_OPENING_LINES, f"{path.name}: opening cell {index} has {lines} lines"


@pytest.mark.parametrize("path", CHAPTERS[1:], ids=lambda p: p.stem)
def test_the_first_cell_says_what_the_chapter_needs(path):
    first = json.loads(path.read_text())["cells"][0]
    assert first["cell_type"] == "markdown" and NEEDS in "".join(first["source"]), (
        f"{path.name}: its first cell should say {NEEDS} (which earlier chapters it builds on)"
    )


def _notebook(tmp_path, sources, setup_at=0):
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["setup"] if i == setup_at else []},
         "source": s}
        for i, s in enumerate(sources)
    ]  # fmt: skip
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    return path


def test_the_checks_can_fail(tmp_path):
    long = "x = 1\n" * (MAX_CELL_LINES + 1)
    path = _notebook(tmp_path, [long, "import os\n" * (MAX_OPENING_LINES + 1), long])
    assert long_cells(path) == [f"cell 2: {MAX_CELL_LINES + 1} lines"]  # the set-up cell aside
    assert len(opening_cell(path)[1].splitlines()) == MAX_OPENING_LINES + 1
    assert numbering_gaps(["00_a.ipynb", "01_b.ipynb", "03_c.ipynb"])
    assert numbering_gaps(["01_a.ipynb"])
    assert not numbering_gaps(["00_a.ipynb", "01_b.ipynb"])
    with pytest.raises(ValueError, match="one set-up cell"):
        opening_cell(_notebook(tmp_path, ["a = 1"], setup_at=5))
