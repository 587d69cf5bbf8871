"""A constant or a parser has one home: ``IGNORE_INDEX`` and ``GIB`` in ``helpers/constants.py``,
``parse_answer`` in ``helpers/task.py``. Every other module of ``helpers/`` and ``tools/``
imports them; none assigns or defines them again (read from the source, at any depth)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.constants import GIB, IGNORE_INDEX
from helpers.paths import REPO_ROOT

HOMES = {
    "IGNORE_INDEX": "helpers/constants.py",
    "GIB": "helpers/constants.py",
    "parse_answer": "helpers/task.py",
}
SKIPPED: tuple[str, ...] = ()  # every module of helpers/ and tools/ is scanned


def definitions(source: str) -> set[str]:
    """The names of ``HOMES`` that a module assigns or defines, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found |= {t.id for t in targets if isinstance(t, ast.Name)}
    return found & set(HOMES)


def stray_definitions(root: Path = REPO_ROOT) -> list[str]:
    stray = []
    for package in ("helpers", "tools"):
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(SKIPPED):
                continue
            for name in sorted(definitions(path.read_text())):
                if HOMES[name] != relative:
                    stray.append(f"{relative} defines {name} (its home is {HOMES[name]})")
    return stray


def test_each_constant_and_parser_is_defined_once():
    assert stray_definitions() == []


def test_the_values_are_the_conventions():
    assert GIB == 1024**3 and IGNORE_INDEX == -100  # torch.nn.functional.cross_entropy's default


@pytest.mark.parametrize(
    "source",
    [
        "IGNORE_INDEX = -100\n",
        "def f():\n    GIB = 2**30\n",
        "GIB: int = 2**30\n",
        "def parse_answer(text):\n    return None\n",
    ],
)
def test_a_second_definition_is_found(tmp_path, source):
    (tmp_path / "helpers").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "helpers" / "data.py").write_text("from helpers.constants import IGNORE_INDEX\n")
    assert stray_definitions(tmp_path) == []
    (tmp_path / "tools" / "report.py").write_text(source)
    assert len(stray_definitions(tmp_path)) == 1
