"""transformers 5 removed `load_in_4bit=`/`load_in_8bit=` as `from_pretrained` arguments: the
course passes a `BitsAndBytesConfig` everywhere (helpers, solutions, chapters)."""

from __future__ import annotations

import ast

import nbformat

from helpers.paths import PACKAGE_DIR

COURSE = PACKAGE_DIR.parent
REMOVED = {"load_in_4bit", "load_in_8bit"}


def offending_calls(source: str) -> list[int]:
    """Line numbers of ``*.from_pretrained(..., load_in_4bit=...)`` calls in Python source."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
            if REMOVED & {k.arg for k in node.keywords}:
                lines.append(node.lineno)
    return lines


def _sources():
    for path in sorted([*COURSE.glob("helpers/**/*.py"), *COURSE.glob("solutions/**/*.py")]):
        yield str(path), path.read_text()
    for path in sorted(COURSE.glob("chapters/*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code" and not cell.source.lstrip().startswith(("%", "!")):
                yield f"{path} cell {i}", cell.source


def test_the_checker_finds_the_removed_argument():
    assert offending_calls("m = A.from_pretrained('x', load_in_4bit=True)") == [1]
    assert offending_calls("m = A.from_pretrained('x', quantization_config=q)") == []


def test_no_from_pretrained_call_passes_load_in_4bit():
    found = {where: lines for where, src in _sources() if (lines := offending_calls(src))}
    assert not found, f"use quantization_config=BitsAndBytesConfig(...) instead: {found}"
