"""One line naming the installed packages whose versions differ from requirements.lock.

usage: python .ci/lock_diff.py LOCK [SET]   (run with the interpreter of the venv to compare)

`make versions` prints it first for each version set, and again beside a failure, so a set that
fails after a dependency's release names the release that changed.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path


def locked(text: str) -> dict[str, str]:
    """``{name: version}`` of a lock's ``name==version`` lines (names normalised)."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)
    return {normalise(name): version for name, version in pins}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """``{name: version}`` of this interpreter's distributions."""
    return {normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """``name locked -> installed`` for each locked package installed at another version, sorted
    by name (a version set installs fewer extras than the lock holds: absent ones are not listed)."""
    return [
        f"{name} {lock[name]} -> {have[name]}"
        for name in sorted(lock)
        if name in have and have[name] != lock[name]
    ]


def line(lock_path: Path, set_name: str, have: dict[str, str]) -> str:
    found = differences(locked(lock_path.read_text()), have)
    if not found:
        return f"versions {set_name}: the same versions as {lock_path.name}"
    return f"versions {set_name}: differs from {lock_path.name} in {len(found)}: " + ", ".join(
        found
    )


if __name__ == "__main__":
    print(line(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "", installed()))
