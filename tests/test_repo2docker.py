"""repo2docker reads binder/ as intended: Python from runtime.txt, the course installed from
binder/requirements.txt after the whole folder is copied, and binder/start as entry point.

`repo2docker --no-build` writes the Dockerfile without docker. The test is skipped (visibly)
where repo2docker is not installed; `make versions` installs it and runs this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers.paths import PACKAGE_DIR

COURSE = PACKAGE_DIR.parent
TOOL = os.environ.get("REPO2DOCKER") or shutil.which("jupyter-repo2docker")


@pytest.mark.install
@pytest.mark.skipif(not TOOL, reason="repo2docker is not installed (set REPO2DOCKER)")
def test_repo2docker_builds_the_binder_folder_as_intended():
    done = subprocess.run(
        [TOOL, "--no-build", "--no-run", "--debug", str(COURSE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    runtime = (COURSE / "binder" / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-")
    assert f"python={runtime.removeprefix('python-')}" in text
    copy_all, install = (
        text.index("COPY --chown=0:0 src/ "),
        text.index('-r "binder/requirements.txt"'),
    )
    assert copy_all < install, "the course must be copied before `pip install .` runs"
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in text
