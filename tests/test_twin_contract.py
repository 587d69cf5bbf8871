"""One contract for every technique package: ``helpers/<technique>/`` with a ``naive.py`` and a
``library.py`` declares its twins' shared face once, as ``PUBLIC_NAMES`` in its ``__init__.py``;
both twins define every one of those names, with the same parameters (names, kinds, order) for
the callables and equal values for the rest, and ``library.py`` uses no private (``_``) name of
``naive.py``. A package whose library twin must differ in a signature (it re-exports the
library's own class, say) names it in ``SIGNATURES_DIFFER`` with the reason.

Packages are found, not listed: a new ``helpers/<technique>/`` with both twins is checked too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

from helpers.paths import PACKAGE_DIR


def technique_packages(root: Path = PACKAGE_DIR) -> list[str]:
    """Every subpackage of ``helpers`` that holds both twins."""
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / "naive.py").is_file() and (p / "library.py").is_file()
    )


PACKAGES = technique_packages()


def declaration_problems(package: types.ModuleType) -> list[str]:
    """What is wrong with a package's ``PUBLIC_NAMES`` (and ``SIGNATURES_DIFFER``)."""
    names = getattr(package, "PUBLIC_NAMES", None)
    if not isinstance(names, tuple) or not names or not all(isinstance(n, str) for n in names):
        return [f"{package.__name__}: PUBLIC_NAMES must be a non-empty tuple of names"]
    problems = [
        f"{package.__name__}: {n!r} is listed twice" for n in set(names) if names.count(n) > 1
    ]
    problems += [f"{package.__name__}: {n!r} is private" for n in names if n.startswith("_")]
    differ = getattr(package, "SIGNATURES_DIFFER", {})
    for name, why in differ.items():
        if name not in names or not isinstance(why, str) or not why.strip():
            problems.append(
                f"{package.__name__}: SIGNATURES_DIFFER[{name!r}] needs a listed name and a reason"
            )
    return problems


def call_shape(obj) -> list[tuple[str, str]] | None:
    """``[(parameter name, kind)]`` of a callable; None where Python cannot tell."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [(p.name, p.kind.name) for p in signature.parameters.values()]


def twin_problems(naive, library, names, differ=()) -> list[str]:
    """Where the twins break the contract for ``names``."""
    problems = []
    for twin in (naive, library):
        if "__all__" in vars(twin):
            problems.append(
                f"{twin.__name__}: declares __all__; the package's PUBLIC_NAMES is the one list"
            )
    for name in names:
        missing = [t.__name__ for t in (naive, library) if not hasattr(t, name)]
        if missing:
            problems.append(f"{name}: missing from {', '.join(missing)}")
            continue
        a, b = getattr(naive, name), getattr(library, name)
        if a is b:
            continue
        if callable(a) != callable(b):
            problems.append(f"{name}: callable in one twin only")
        elif callable(a):
            same = call_shape(a) == call_shape(b)
            if name in differ and same:
                problems.append(f"{name}: listed in SIGNATURES_DIFFER but the signatures agree")
            elif name not in differ and not same:
                problems.append(
                    f"{name}: naive{inspect.signature(a)} != library{inspect.signature(b)}"
                )
        elif a != b:
            problems.append(f"{name}: naive {a!r} != library {b!r}")
    return problems


def private_uses(source: str, package: str) -> list[str]:
    """The private names of ``helpers.<package>.naive`` that a library twin's source uses."""
    naive = f"helpers.{package}.naive"
    tree = ast.parse(source)
    aliases, used = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            into_naive = (node.level == 1 and module == "naive") or module == naive
            from_package = (node.level == 1 and module == "") or module == f"helpers.{package}"
            for alias in node.names:
                if into_naive and alias.name.startswith("_"):
                    used.append(alias.name)
                if from_package and alias.name == "naive":
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == naive and a.asname}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and (
                (isinstance(node.value, ast.Name) and node.value.id in aliases)
                or ast.unparse(node.value) == naive
            )
        ):
            used.append(node.attr)
    return sorted(set(used))


@pytest.mark.parametrize("package", PACKAGES)
def test_library_uses_no_private_name_of_naive(package):
    source = (PACKAGE_DIR / package / "library.py").read_text()
    assert private_uses(source, package) == [], (
        f"helpers/{package}/library.py uses private names of naive.py: make them public, or move "
        "what both twins share into a module of the package"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_twins_share_the_declared_names_and_signatures(package):
    module = importlib.import_module(f"helpers.{package}")
    assert declaration_problems(module) == []
    naive = importlib.import_module(f"helpers.{package}.naive")
    try:
        library = importlib.import_module(f"helpers.{package}.library")
    except ImportError as err:  # an optional extra (deploy, sft, harness) not installed here
        pytest.skip(f"helpers.{package}.library cannot be imported here: {err}")
    differ = getattr(module, "SIGNATURES_DIFFER", {})
    assert twin_problems(naive, library, module.PUBLIC_NAMES, differ) == []


def test_packages_are_found_by_their_twins(tmp_path):
    for name, files in {"both": ("naive.py", "library.py"), "one": ("naive.py",)}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("")
    assert technique_packages(tmp_path) == ["both"]
    assert {"lora", "quantization", "memory"} <= set(PACKAGES)


def module(name: str, source: str) -> types.ModuleType:
    made = types.ModuleType(name)
    exec(compile(source, name, "exec"), made.__dict__)  # a throwaway twin for the checks below
    return made


NAIVE = "def f(x, r=2):\n    return x\nclass C:\n    def __init__(self, n):\n        pass\nK = 3\n"


@pytest.mark.parametrize(
    ("library_source", "problem"),
    [
        (NAIVE, None),
        ("def f(x, rank=2):\n    return x\n" + NAIVE.split("\n", 2)[2], "f: naive(x, r=2)"),
        (NAIVE.replace("def f(x, r=2)", "def f(x, *, r=2)"), "f: naive(x, r=2)"),
        (NAIVE.replace("(self, n)", "(self, n, m)"), "C: naive(n)"),
        (NAIVE.replace("K = 3", "K = 4"), "K: naive 3 != library 4"),
        (NAIVE.replace("K = 3", ""), "K: missing from library"),
        (NAIVE + "__all__ = ['f']\n", "library: declares __all__"),
    ],
)
def test_the_contract_catches_a_twin_that_differs(library_source, problem):
    found = twin_problems(
        module("naive", NAIVE), module("library", library_source), ("f", "C", "K")
    )
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(problem), found


def test_a_declared_difference_must_be_real_and_explained():
    naive, library = module("naive", NAIVE), module("library", NAIVE)
    assert twin_problems(naive, library, ("f",), {"f": "why"}) == [
        "f: listed in SIGNATURES_DIFFER but the signatures agree"
    ]
    differs = module("library", NAIVE.replace("(x, r=2)", "(x)"))
    assert twin_problems(naive, differs, ("f",), {"f": "the library's own function"}) == []
    bad = module("p", "PUBLIC_NAMES = ('f', 'f', '_g')\nSIGNATURES_DIFFER = {'h': ''}\n")
    assert len(declaration_problems(bad)) == 3
    assert declaration_problems(module("p", "PUBLIC_NAMES = ['f']\n")) != []


@pytest.mark.parametrize(
    "source",
    [
        "from .naive import _check, f\n",
        "from helpers.lora.naive import _check\n",
        "from . import naive\nnaive._check(1)\n",
        "from helpers.lora import naive as twin\ntwin._check(1)\n",
        "import helpers.lora.naive as twin\ntwin._check(1)\n",
        "import helpers.lora.naive\nhelpers.lora.naive._check(1)\n",
    ],
)
def test_a_private_name_of_naive_is_caught_however_it_is_reached(source):
    assert private_uses(source, "lora") == ["_check"]


def test_public_names_and_dunders_of_naive_are_allowed():
    source = "from . import naive\nfrom .naive import f\nnaive.g(naive.__name__)\nx._private\n"
    assert private_uses(source, "lora") == []
