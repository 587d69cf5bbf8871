"""`make course` starts each chapter's kernel over IPC (Unix sockets in Jupyter's private runtime
folder), so nothing it prints is a transport warning a learner must read, and the sockets never
land in the chapter's folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import nbformat
import pytest

from helpers.paths import PACKAGE_DIR

COURSE = PACKAGE_DIR.parent
WARNING = "Kernel is running over TCP without encryption"
CELL = (
    "from ipykernel.kernelapp import IPKernelApp\n"
    "app = IPKernelApp.instance()\n"
    "print(app.transport, app.ip)"
)
RUN = """
import sys
import papermill
from tools import course
kwargs = {} if sys.argv[3] == "default" else {"kernel_manager_class": course.kernel_manager_class()}
papermill.execute_notebook(sys.argv[1], sys.argv[2], kernel_name="python3", progress_bar=False,
                           cwd=sys.argv[4], **kwargs)
"""


def run(tmp_path, manager: str) -> tuple[str, str]:
    """Execute a one-cell notebook; returns (what papermill's process printed, the transport)."""
    folder = tmp_path / manager
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "in.ipynb")
    env = {**os.environ, "PYTHONPATH": str(COURSE)}
    args = [str(folder / "in.ipynb"), str(tmp_path / f"{manager}-out.ipynb"), manager, str(folder)]
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = nbformat.read(tmp_path / f"{manager}-out.ipynb", as_version=4)
    assert sorted(p.name for p in folder.iterdir()) == ["in.ipynb"]  # no socket files left here
    return done.stdout + done.stderr, out.cells[0].outputs[0]["text"].split()


@pytest.mark.skipif(os.name == "nt", reason="Windows has no IPC transport")
def test_course_kernels_use_ipc_and_print_no_transport_warning(tmp_path):
    printed, (transport, where) = run(tmp_path, "course")
    assert transport == "ipc" and WARNING not in printed
    assert where.startswith(tempfile.gettempdir()) and not os.path.exists(os.path.dirname(where))


@pytest.mark.skipif(os.name == "nt", reason="Windows has no IPC transport")
def test_the_default_tcp_kernel_prints_the_warning_the_course_avoids(tmp_path):
    printed, (transport, _) = run(tmp_path, "default")
    assert transport == "tcp"
    if WARNING not in printed:
        pytest.skip("this ipykernel does not print the TCP warning: nothing to avoid")
