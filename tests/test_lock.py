"""The lock make test installs (requirements.lock), the set-up cell's versions read from it, and
the canary line of make versions (.ci/lock_diff.py) that names what differs from it."""

from __future__ import annotations

import importlib.util
import re

import pytest
import tomllib

from helpers.notebook import LOCK_FILE, SETUP_PACKAGES, TESTED_VERSIONS, locked_versions
from helpers.paths import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent
NOT_LOCKED = {"torch", "llama-cpp-python"}  # installed by make on their own (see Makefile)


def lock_diff():
    spec = importlib.util.spec_from_file_location("lock_diff", ROOT / ".ci" / "lock_diff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared() -> set[str]:
    """Every package pyproject.toml names in its dependencies and in the locked extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"^LOCK_EXTRAS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    specs = list(project["dependencies"])
    for extra in extras.group(1).split():
        specs += project["optional-dependencies"][extra]
    names = {re.match(r"[A-Za-z0-9._-]+", spec).group(0) for spec in specs}
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names} - NOT_LOCKED


def test_every_declared_package_is_pinned_with_a_hash():
    text = LOCK_FILE.read_text()
    pins = locked_versions(LOCK_FILE)
    assert declared() <= set(pins), declared() - set(pins)
    assert not NOT_LOCKED & set(pins)
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


def test_make_installs_the_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q --require-hashes --no-deps -r $(LOCK)" in makefile
    assert "LOCK := requirements.lock" in makefile


def test_setup_cell_versions_are_the_locks():
    assert TESTED_VERSIONS == {name: locked_versions(LOCK_FILE)[name] for name in SETUP_PACKAGES}


def test_a_missing_lock_says_how_to_write_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="make lock"):
        locked_versions(tmp_path / "requirements.lock")


def test_canary_names_a_bumped_package_first(tmp_path):
    diff = lock_diff()
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\ntransformers==5.25.0 \\\n    --hash=sha256:00\npeft==0.21.2 \\\n"
        "    --hash=sha256:11\nsphinx==9.0.4\n"
    )
    have = {"transformers": "5.26.0", "peft": "0.21.2", "torch": "2.13.0"}  # no sphinx
    line = diff.line(lock, "latest", have)
    assert (
        line
        == "versions latest: differs from requirements.lock in 1: transformers 5.25.0 -> 5.26.0"
    )
    assert diff.line(lock, "latest", {"transformers": "5.25.0"}).endswith(
        "the same versions as requirements.lock"
    )


def test_canary_is_the_first_line_of_a_failed_set():
    script = (ROOT / ".ci" / "versions.sh").read_text()
    assert script.index("diff=$($venv/bin/python .ci/lock_diff.py") < script.index("-m pytest")
    final = script.splitlines()[-1]
    assert final.index("sort -u") < final.index('echo "versions: failed:')
