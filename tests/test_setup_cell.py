"""The chapters' set-up cell in a fake Colab and a fake Kaggle: no network, pip and git faked,
an older transformers preinstalled, an unrelated `helpers.py` beside the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.notebook import COURSE_DIR, COURSE_REF, TESTED_VERSIONS, minimum_versions
from helpers.paths import PACKAGE_DIR

FAKES = Path(__file__).parent / "fakes"
COURSE = PACKAGE_DIR.parent
COLAB = {"COLAB_RELEASE_TAG": "release-colab-test"}
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}


def run_cell(tmp_path, marker, versions, pip="ok", net="on", imported=""):
    """Run the set-up cell in tmp_path; return (exit code, output, logged commands)."""
    (tmp_path / "helpers.py").write_text("UNRELATED = True\n")
    log = tmp_path / "commands.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLAB", "KAGGLE"))}
    env |= marker | {"PATH": f"{FAKES}:{env['PATH']}", "FAKE_COURSE": str(COURSE)}
    env |= {"FAKE_LOG": str(log), "FAKE_VERSIONS": json.dumps(versions), "FAKE_PIP": pip}
    env |= {"FAKE_NET": net, "FAKE_IMPORTED": imported, "COURSE_TORCH_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(FAKES / "run_setup_cell.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    logged = log.read_text() if log.exists() else ""
    return done.returncode, done.stdout + done.stderr, logged


def test_colab_upgrades_an_old_transformers_keeps_torch_and_asks_for_a_restart(tmp_path):
    old = {"transformers": "4.57.1", "bitsandbytes": None}
    code, out, logged = run_cell(tmp_path, COLAB, old, imported="transformers")
    assert code == 0, out
    assert "fetch -q --depth 1 https://" in logged and COURSE_REF in logged
    new_tf, new_bnb = TESTED_VERSIONS["transformers"], TESTED_VERSIONS["bitsandbytes"]
    assert f"transformers {new_tf} (was 4.57.1)" in out
    assert f"bitsandbytes {new_bnb} (was not installed)" in out
    # Only the two packages; torch pinned at the installed version by a constraint.
    pip_line = next(line for line in logged.splitlines() if line.startswith("pip"))
    assert f"transformers=={new_tf}" in pip_line and f"bitsandbytes=={new_bnb}" in pip_line
    assert "peft" not in pip_line and "constraint: torch==" in pip_line
    assert "Restart the runtime" in out and "transformers was already imported" in out
    assert (tmp_path / COURSE_DIR).is_symlink()  # the course came from the fetched folder


def test_no_restart_when_nothing_replaced_was_imported(tmp_path):
    code, out, _ = run_cell(tmp_path, COLAB, {"bitsandbytes": None})
    assert code == 0, out
    assert "installed bitsandbytes" in out and "Restart" not in out


def test_nothing_to_install_says_so(tmp_path):
    code, out, logged = run_cell(tmp_path, COLAB, {})
    assert code == 0, out
    assert "every package the course needs is installed" in out and "pip" not in logged


def test_kaggle_without_internet_says_turn_it_on(tmp_path):
    code, out, _ = run_cell(tmp_path, KAGGLE, {}, net="off")
    assert code != 0
    assert "turn on Internet in the notebook's settings" in out and "COURSE_REPO_URL" in out
    assert "Traceback" not in out and not (tmp_path / COURSE_DIR).exists()


def test_kaggle_pip_offline_says_turn_internet_on(tmp_path):
    code, out, _ = run_cell(tmp_path, KAGGLE, {"peft": "0.13.0"}, pip="offline")
    assert code != 0 and "Could not download peft==" in out
    assert "turn on Internet" in out and "Traceback" not in out


def test_a_package_needing_another_torch_is_refused_with_a_sentence(tmp_path):
    code, out, _ = run_cell(tmp_path, COLAB, {"bitsandbytes": None}, pip="torch-conflict")
    assert code != 0 and "would need another torch than the installed" in out
    assert "Traceback" not in out


def test_a_folder_with_the_course_name_that_is_not_the_course_is_refused(tmp_path):
    (tmp_path / COURSE_DIR).mkdir()
    code, out, _ = run_cell(tmp_path, COLAB, {})
    assert code != 0 and "is not the course" in out


@pytest.mark.parametrize("name", list(TESTED_VERSIONS))
def test_tested_versions_meet_the_declared_bounds(name):
    from helpers.notebook import version_key

    bound = minimum_versions(COURSE)[name]
    assert version_key(TESTED_VERSIONS[name]) >= version_key(bound)


def test_prepare_refuses_helpers_from_another_folder(tmp_path):
    from helpers.notebook import prepare

    with pytest.raises(SystemExit, match="not from the course"):
        prepare(tmp_path)


def test_every_chapter_carries_badges_and_the_p100_parameter_and_sync_is_idempotent(tmp_path):
    import shutil

    import nbformat

    from helpers.course import chapters
    from helpers.notebook import P100_FIX_LINE, badges, sync

    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        assert first.source.split("\n")[2] == badges(path.name), path
        assert f"blob/{COURSE_REF}/chapters/{path.name}" in badges(path.name)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert P100_FIX_LINE in params.source, path
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        assert sync([copy]) == [], f"{path}: run `python -m helpers.notebook sync`"


P100 = dict(
    device="cuda",
    gpu_name="Tesla P100-PCIE-16GB",
    capability=(6, 0),
    total_memory_gb=15.9,
    arch_list=("sm_70", "sm_75", "sm_80", "sm_90", "sm_100", "sm_120"),
    gpu_count=1,
    torch_version="2.11.0",
)


def _fake_p100(monkeypatch, calls, returncode=0):
    import subprocess as sp

    import torch

    from helpers import hardware, notebook

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # check_gpu counts through NVML
    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware(**P100))

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return sp.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution")

    monkeypatch.setattr(notebook.subprocess, "run", fake_run)


def test_p100_without_the_fix_flag_explains_and_installs_nothing(monkeypatch, capsys):
    from helpers.notebook import check_gpu

    calls = []
    _fake_p100(monkeypatch, calls)
    check_gpu(p100_fix=False)
    out = capsys.readouterr().out
    assert calls == [] and "no kernels for the Tesla P100" in out and "P100_FIX = True" in out


def test_p100_fix_reinstalls_the_same_torch_from_cu126_and_asks_for_a_restart(monkeypatch, capsys):
    from helpers.notebook import check_gpu

    calls = []
    _fake_p100(monkeypatch, calls)
    check_gpu(p100_fix=True)
    assert len(calls) == 1
    cmd = " ".join(calls[0])
    assert "-m pip install --force-reinstall --no-deps torch==2.11.0" in cmd
    assert cmd.endswith("--index-url https://download.pytorch.org/whl/cu126")
    assert "Restart the runtime" in capsys.readouterr().out
    failed = []
    _fake_p100(monkeypatch, failed, returncode=1)
    with pytest.raises(SystemExit, match="pip could not install torch"):
        check_gpu(p100_fix=True)
