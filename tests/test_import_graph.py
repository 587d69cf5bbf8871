"""The course's modules import each other without cycles, and the learner's package never
imports the course's machinery.

The graph is read from the source (``ast``), so an import inside a function counts as much as
one at the top of a module: a lazy import hides a cycle from Python, not from a reader.
``helpers/`` (what chapters import) may be imported by ``tools/`` (runner, workbook, website,
memory guard, GPU check, workshop kit), never the other way round.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

PACKAGES = ("helpers", "tools")


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the packages under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` (in ``path``) imports, wherever in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from pkg import mod` imports the module pkg.mod; `from pkg import name`, pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = REPO_ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """``{module: the course modules it imports}`` for the packages under ``root``."""
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as ``[a, b, ..., a]``, or None when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def test_the_course_has_no_import_cycle():
    graph = import_graph()
    assert "helpers.report" in graph and "tools.course" in graph, sorted(graph)
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_helpers_imports_nothing_from_tools():
    upward = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name.split(".")[0] == "helpers"
        for target in targets
        if target.split(".")[0] == "tools"
    )
    assert upward == [], "the learner's package must not import the course's machinery"


def test_importing_what_chapters_use_loads_no_tools_module():
    """At run time too: the modules whose imports used to reach the machinery (report's memory
    record, the set-up cell's notebook, chapter 08's memory plan) load nothing of ``tools``."""
    code = (
        "import sys, helpers.report, helpers.notebook, helpers.memory.resident, "
        "helpers.sft.byod, helpers.doctor\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tools')\n"
        "assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "statement",
    [
        "from helpers import b",  # at the top
        "def f():\n    from helpers.b import g",  # lazily, inside a function
        "from . import b",  # relative
        "import helpers.b.sub",  # through a submodule
    ],
)
def test_a_cycle_is_found_however_it_is_written(tmp_path, statement):
    write(tmp_path / "helpers" / "__init__.py", "")
    write(tmp_path / "helpers" / "a.py", statement + "\n")
    write(tmp_path / "helpers" / "b" / "__init__.py", "from helpers.a import x\n")
    write(tmp_path / "helpers" / "b" / "sub.py", "from helpers.a import x\n")
    graph = import_graph(tmp_path, ("helpers",))
    cycle = import_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "helpers.a" in cycle, graph


def test_no_cycle_is_reported_where_there_is_none(tmp_path):
    write(tmp_path / "helpers" / "__init__.py", "")
    write(tmp_path / "helpers" / "a.py", "from helpers import b\nimport os\n")
    write(tmp_path / "helpers" / "b.py", "from helpers import c\n")
    write(tmp_path / "helpers" / "c.py", "x = 1\n")
    graph = import_graph(tmp_path, ("helpers",))
    assert graph == {
        "helpers": set(),
        "helpers.a": {"helpers.b"},
        "helpers.b": {"helpers.c"},
        "helpers.c": set(),
    }
    assert import_cycle(graph) is None
