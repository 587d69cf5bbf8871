"""Chapter 06 without llm-compressor: its guard cell says which packages are missing and turns
the library twins of GPTQ and AWQ off, and every use of them in the chapter sits behind that
guard, so the rest of the chapter runs (a Colab or Kaggle image where the install failed)."""

import ast
import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from helpers import gptq

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "06_gptq_awq.ipynb"
# the library twins (imported as these names: importing ours is harmless) and what only they make
LIBRARY_NAMES = {"gptq_library", "awq_library", "theirs", "awq_lib", "agree"}


def _code_cells() -> list[str]:
    cells = json.loads(CHAPTER.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.fixture
def hidden(monkeypatch):
    """llm-compressor and compressed-tensors cannot be found."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in gptq.LIBRARY_PACKAGES else find_spec(name, *a),
    )


def test_missing_packages_are_named(hidden):
    assert gptq.missing_library_packages() == ["llmcompressor", "compressed_tensors"]


def test_guard_cell_turns_the_library_twins_off(hidden):
    (cell,) = [c for c in _code_cells() if "missing_library_packages()" in c]
    namespace, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(cell, "guard", "exec"), namespace)
    assert namespace["LIBRARY_TWINS"] is False
    assert "llmcompressor, compressed_tensors cannot be imported" in out.getvalue()


def _guarded(node, parents) -> bool:
    """Inside ``if LIBRARY_TWINS:`` (or the else branch of ``if not LIBRARY_TWINS``)."""
    for parent, child in zip(parents, [*parents[1:], node], strict=True):
        if isinstance(parent, ast.If) and "LIBRARY_TWINS" in ast.unparse(parent.test):
            negated = isinstance(parent.test, ast.UnaryOp)
            if child in (parent.orelse if negated else parent.body):
                return True
    return False


def _unguarded_uses(source: str) -> list[str]:
    found = []

    def visit(node, parents):
        if isinstance(node, ast.Name) and node.id in LIBRARY_NAMES and not _guarded(node, parents):
            found.append(f"line {node.lineno}: {node.id}")
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(ast.parse(source), [])
    return found


def test_every_use_of_the_library_twins_is_guarded():
    uses = {}
    for source in _code_cells():
        if found := _unguarded_uses(source):
            uses[source.splitlines()[0]] = found
    assert not uses, uses


def test_the_guard_check_can_fail():
    assert _unguarded_uses("theirs = gptq_library.gptq_quantize(w, h)\n")
    assert not _unguarded_uses("if LIBRARY_TWINS:\n    theirs = gptq_library.gptq_quantize(w, h)\n")
    assert not _unguarded_uses("if not LIBRARY_TWINS:\n    pass\nelse:\n    print(awq_lib)\n")
    assert _unguarded_uses("if not LIBRARY_TWINS:\n    print(awq_lib)\n")
