"""The course installed as binder/ installs it (plain `pip install ".[sft,harness]"`, not
editable, then postBuild's `python -m helpers.notebook install-extras deploy`) into a fresh venv
finds its tiny model from any working directory, and chapters 00 and 06 run from a folder outside
the clone (the set-up cell uses the installed course and fetches nothing).

Slow: it builds a venv with torch 2.13.0 from local disk, copies the tracked files of this
checkout (as Binder clones them), and installs binder/requirements.txt with this environment's
versions as constraints. With pip that took 16 minutes on a heavily loaded 2-core machine; uv
(which `make versions` installs in build/venvs/tools) installs the same requirements, from its
cache, in a fraction of that, so the test uses uv when it finds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from helpers.paths import PACKAGE_DIR

COURSE = PACKAGE_DIR.parent
LOAD = """
import json, os, helpers.paths as p
from helpers.models import load_model
from helpers.profiles import get_profile
model, tok = load_model(get_profile("tiny"))
print(json.dumps({"helpers": p.PACKAGE_DIR.as_posix(), "data": p.DATA_DIR.as_posix(),
                  "params": sum(t.numel() for t in model.parameters()), "cwd": os.getcwd()}))
"""


def _installer(py: str) -> list[str]:
    """The install command: uv when available (same requirements, much faster), else pip."""
    uv = COURSE / "build" / "venvs" / "tools" / "bin" / "uv"
    uv = str(uv) if uv.exists() else shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "-q", "--python", py, "--index-strategy", "unsafe-best-match"]
    return [py, "-m", "pip", "install", "-q"]


def _run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.install
def test_binder_style_install_loads_the_tiny_model_and_runs_chapter_00(tmp_path):
    tracked = _run(["git", "ls-files"], cwd=COURSE).split()
    clone = tmp_path / "clone"
    for name in tracked:
        if (COURSE / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(COURSE / name, clone / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # no --system-site-packages
    py = str(env_dir / "bin" / "python")
    pins = tmp_path / "pins.txt"
    freeze = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
    pins.write_text("\n".join(line for line in freeze.splitlines() if "==" in line))
    # Binder's extra index (torch's CPU wheels) is not reachable here: torch comes from disk.
    reqs = (clone / "binder" / "requirements.txt").read_text().splitlines()
    reqs = [r for r in reqs if r and not r.startswith(("#", "--extra-index-url"))]
    install = _installer(py)
    links = os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS", "")
    env = {**os.environ, "UV_FIND_LINKS": links} if links else dict(os.environ)
    _run([*install, "-c", str(pins), "torch==2.13.0"], env=env)
    _run([*install, "-c", str(pins), *reqs], cwd=clone, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("COURSE_ROOT", None)
    env.pop("PYTHONPATH", None)
    found = json.loads(_run([py, "-c", LOAD], cwd=elsewhere, env=env).splitlines()[-1])
    assert "site-packages" in found["helpers"] and str(COURSE) not in found["helpers"]
    assert found["data"].endswith("share/budget-finetuning-course/data")
    assert 1_000_000 < found["params"] < 10_000_000
    # postBuild's step; llama.cpp's wheel from this machine's cache when make built one there.
    _run([py, "-m", "helpers.notebook", "install-extras", "deploy"], cwd=elsewhere, env=env)
    # Chapters 00 and 06 from a folder outside the clone, with papermill in the same venv.
    _run([*install, "-c", str(pins), "papermill", "ipykernel"])
    env["COURSE_BUILD_DIR"] = str(tmp_path / "build")
    for name in ("00_setup.ipynb", "07_deploy.ipynb"):
        shutil.copy(clone / "chapters" / name, elsewhere / name)
        args = ["-k", "python3", "--cwd", str(elsewhere), "-p", "PROFILE", "tiny"]
        _run([py, "-m", "papermill", *args, name, f"out-{name}"], cwd=elsewhere, env=env)
    assert sorted(p.name for p in elsewhere.iterdir() if p.is_dir()) == []  # nothing fetched
