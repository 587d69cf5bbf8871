"""Run the chapters' set-up cell as a notebook kernel would, with pip faked.

The environment says which packages are "installed" ($FAKE_VERSIONS, JSON), which were already
imported ($FAKE_IMPORTED), how pip behaves ($FAKE_PIP: "ok", "offline" or "torch-conflict"),
and where to log the commands ($FAKE_LOG). A `helpers.py` in the working directory plays the
unrelated module that must not be imported.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import types

versions = json.loads(os.environ["FAKE_VERSIONS"])
real_version, real_run = importlib.metadata.version, subprocess.run


def fake_version(name):
    if name in versions:
        if versions[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    return real_version(name)


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
        for spec in cmd[cmd.index("-q") + 3 :]:
            name, _, new = spec.partition("==")
            versions[name] = new
    return subprocess.CompletedProcess(cmd, 1 if err else 0, "", err)


importlib.metadata.version, subprocess.run = fake_version, fake_run
for name in os.environ.get("FAKE_IMPORTED", "").split():
    sys.modules.setdefault(name, types.ModuleType(name))
from helpers.notebook import SETUP_CELL  # noqa: E402 - the course under test

for name in [m for m in sys.modules if m.split(".")[0] == "helpers"]:
    del sys.modules[name]
sys.path.insert(0, os.getcwd())
import helpers  # noqa: E402 - the unrelated helpers.py beside the notebook, as a kernel has it

assert not hasattr(helpers, "notebook"), "the fake helpers.py should be imported first"
exec(compile(SETUP_CELL, "<set-up cell>", "exec"), {"__name__": "__main__"})
