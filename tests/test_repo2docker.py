"""repo2docker reads binder/ as intended: Python from runtime.txt, a compiler from apt.txt, the
course and chapter 09's extras installed from binder/requirements.txt after the whole folder is
copied, then binder/postBuild (chapter 07's extras, llama.cpp compiled at build time), and
binder/start as entry point.

`repo2docker --no-build` writes the Dockerfile without docker. The test is skipped (visibly)
where repo2docker is not installed; `make versions` installs it and runs this test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from helpers.notebook import CHAPTER_EXTRAS
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
    compiler = text.index("apt-get install --yes --no-install-recommends build-essential")
    post_build = text.index("RUN ./binder/postBuild")
    assert compiler < install < post_build, "postBuild compiles llama.cpp after the installs"
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in text


def test_binder_installs_every_chapters_extras_at_build_time():
    binder = COURSE / "binder"
    wanted = {extra for extras in CHAPTER_EXTRAS.values() for extra in extras}
    requirements = (binder / "requirements.txt").read_text()
    (course_line,) = re.findall(r"^\.(?:\[([a-z,]+)\])?$", requirements, flags=re.M)
    post_build = (binder / "postBuild").read_text()
    (command,) = re.findall(r"-m helpers\.notebook install-extras (.+)$", post_build, flags=re.M)
    assert set(course_line.split(",")) | set(command.split()) == wanted
    assert "set -euo pipefail" in post_build and os.access(binder / "postBuild", os.X_OK)
    assert "build-essential" in (binder / "apt.txt").read_text().split()
