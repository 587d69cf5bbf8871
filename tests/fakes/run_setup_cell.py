"""Run the chapters' set-up cell as a notebook kernel would, with pip faked.

The environment says which packages are "installed" ($FAKE_VERSIONS, JSON), which were already
imported ($FAKE_IMPORTED), how pip behaves ($FAKE_PIP: "ok", "offline" or "torch-conflict"),
and where to log the commands ($FAKE_LOG). A `helpers.py` in the working directory plays the
unrelated module that must not be imported. The course is not installed in this fake image
(the one the tests run from is hidden) unless $FAKE_INSTALLED is set; $FAKE_REPO_URL and
$FAKE_COMMIT replace the cell's COURSE_REPO_URL and COURSE_COMMIT, as a fork would.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import types

versions = json.loads(os.environ["FAKE_VERSIONS"])
real_version, real_run = importlib.metadata.version, subprocess.run
real_distribution = importlib.metadata.distribution


def fake_version(name):
    if name in versions:
        if versions[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    return real_version(name)


def fake_distribution(name):
    if name == "budget-finetuning-course" and not os.environ.get("FAKE_INSTALLED"):
        raise importlib.metadata.PackageNotFoundError(name)
    return real_distribution(name)


def fake_run(cmd, *args, **kwargs):
    if list(cmd[1:3]) != ["-m", "pip"]:
        return real_run(cmd, *args, **kwargs)
    with open(os.environ["FAKE_LOG"], "a") as log:
        constraint = cmd[cmd.index("-c") + 1] if "-c" in cmd else None
        kept = open(constraint).read().strip() if constraint else ""
        log.write(f"pip {' '.join(cmd[3:])} | constraint: {kept}\n")
    mode, err = os.environ.get("FAKE_PIP", "ok"), ""
    if mode == "offline":
        err = "ERROR: ... NewConnectionError: Failed to establish a new connection"
    if mode == "torch-conflict":
        err = "ERROR: Cannot install bitsandbytes because ...\n    bitsandbytes 0.50.2 depends on torch>=2.12"
    if not err:
        for spec in [a for a in cmd[cmd.index("-q") + 3 :] if not a.startswith("-")]:
            name, _, new = spec.partition("==")
            versions[name] = new
    return subprocess.CompletedProcess(cmd, 1 if err else 0, "", err)


importlib.metadata.version, subprocess.run = fake_version, fake_run
importlib.metadata.distribution = fake_distribution
for name in os.environ.get("FAKE_IMPORTED", "").split():
    sys.modules.setdefault(name, types.ModuleType(name))
from helpers.notebook import setup_cell  # noqa: E402 - the course under test

for name in [m for m in sys.modules if m.split(".")[0] == "helpers"]:
    del sys.modules[name]
sys.path.insert(0, os.getcwd())
import helpers  # noqa: E402 - the unrelated helpers.py beside the notebook, as a kernel has it

assert not hasattr(helpers, "notebook"), "the fake helpers.py should be imported first"
cell = setup_cell(os.environ.get("FAKE_CHAPTER", ""))  # $FAKE_CHAPTER: a chapter stem
for name in ("COURSE_REPO_URL", "COURSE_COMMIT"):
    if os.environ.get(f"FAKE_{name.removeprefix('COURSE_')}"):
        value = os.environ[f"FAKE_{name.removeprefix('COURSE_')}"]
        cell = re.sub(rf'^{name} = "[^"]*"', f'{name} = "{value}"', cell, count=1, flags=re.M)
exec(compile(cell, "<set-up cell>", "exec"), {"__name__": "__main__"})
