"""The chapters' set-up cell in a fake Colab and a fake Kaggle: no network, pip faked, git faked
or real against local stand-ins (a missing repository, a missing commit, an unreachable server,
one that asks for a password), an older transformers preinstalled, an unrelated `helpers.py`
beside the notebook."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.notebook import (
    COURSE_COMMIT,
    COURSE_DIR,
    COURSE_REF,
    TESTED_VERSIONS,
    minimum_versions,
    setup_cell,
)
from helpers.paths import PACKAGE_DIR

FAKES = Path(__file__).parent / "fakes"
COURSE_REPO = "budget-finetuning/course"
COURSE = PACKAGE_DIR.parent
COLAB = {"COLAB_RELEASE_TAG": "release-colab-test"}
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}


def run_cell(
    tmp_path, marker, versions, pip="ok", net="on", imported="", git="fake", env=None, **fakes
):
    """Run the set-up cell in tmp_path; return (exit code, output, logged commands).

    ``git="real"`` runs the system's git; ``env`` adds variables; ``fakes`` sets $FAKE_<NAME>
    (REPO_URL, COMMIT, INSTALLED).
    """
    (tmp_path / "helpers.py").write_text("UNRELATED = True\n")
    log = tmp_path / "commands.log"
    extra, env = (
        env or {},
        {k: v for k, v in os.environ.items() if not k.startswith(("COLAB", "KAGGLE"))},
    )
    env |= extra
    path = env["PATH"] if git == "real" else f"{FAKES}:{env['PATH']}"
    env |= marker | {"PATH": path, "FAKE_COURSE": str(COURSE)}
    env |= {f"FAKE_{k.upper()}": str(v) for k, v in fakes.items()}
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
    assert f"fetch -q --depth 1 https://github.com/{COURSE_REPO}" in logged
    assert COURSE_COMMIT in logged and "-c credential.helper= " in logged
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
    assert "the network is unreachable" in out
    assert "turn on Internet in the notebook's settings" in out
    assert "git said: fatal: unable to access" in out and "Could not resolve host" in out
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


def _repo_with_one_commit(path: Path) -> str:
    """A local git repository holding one empty commit; returns that commit."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(
        ["git", "-C", str(path), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env
    )
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _assert_one_sentence(code, out, tmp_path, reason, git_said):
    assert code != 0, out
    message = out.strip().splitlines()[-1]
    assert message.startswith("Could not fetch the course (commit "), out
    # git's own words follow "git said:"; versions word some errors differently (2.39 says
    # "fatal: remote error: upload-pack: ...", newer ones "fatal: git upload-pack: ..."), so
    # the test looks for git's words after the marker rather than the whole line
    assert reason in message and "git said: fatal: " in message, message
    assert git_said in message.split("git said: ", 1)[1], message
    assert "Traceback" not in out and not (tmp_path / COURSE_DIR).exists()


def test_a_missing_repository_says_so_with_gits_reason(tmp_path):
    missing = tmp_path / "no-such-repository"
    code, out, _ = run_cell(tmp_path, COLAB, {}, git="real", repo_url=missing)
    _assert_one_sentence(
        code,
        out,
        tmp_path,
        "the repository was not found (or is private): check COURSE_REPO_URL",
        f"fatal: '{missing}' does not appear to be a git repository",
    )


def test_a_commit_the_repository_lacks_says_so_with_gits_reason(tmp_path):
    _repo_with_one_commit(tmp_path / "repo")
    code, out, _ = run_cell(tmp_path, COLAB, {}, git="real", repo_url=tmp_path / "repo")
    _assert_one_sentence(
        code,
        out,
        tmp_path,
        "the repository has no commit COURSE_COMMIT: check COURSE_COMMIT",
        f"upload-pack: not our ref {COURSE_COMMIT}",
    )


def test_an_unreachable_server_says_the_network_with_gits_reason(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"https://127.0.0.1:{port}/course"
    code, out, _ = run_cell(tmp_path, COLAB, {}, git="real", repo_url=url)
    _assert_one_sentence(
        code, out, tmp_path, "the network is unreachable", f"fatal: unable to access '{url}/'"
    )
    assert "Failed to connect" in out


class _AsksForPassword(http.server.BaseHTTPRequestHandler):
    """What GitHub answers for a repository that does not exist: 401, asking for credentials."""

    def do_GET(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_git_never_waits_on_a_prompt_or_a_credential_helper(tmp_path):
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 300\n")
    hang.chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(f"[credential]\n\thelper = !{hang}\n")  # a helper that never answers
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AsksForPassword)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/owner/missing"
    try:
        start = time.monotonic()
        hostile = {"GIT_CONFIG_GLOBAL": str(config), "GIT_ASKPASS": str(hang)}
        hostile["SSH_ASKPASS"] = str(hang)
        code, out, _ = run_cell(tmp_path, COLAB, {}, git="real", repo_url=url, env=hostile)
        took = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    _assert_one_sentence(
        code,
        out,
        tmp_path,
        "the repository was not found (or is private)",
        f"fatal: could not read Username for '{url.rsplit('/', 2)[0]}': terminal prompts disabled",
    )
    assert took < 60, f"the set-up cell waited {took:.0f} s"


def test_a_real_git_fetch_of_the_pinned_commit_gets_the_course(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(COURSE), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode:
        pytest.skip(f"{COURSE} is not a git checkout")
    code, out, logged = run_cell(
        tmp_path, {}, {}, git="real", repo_url=COURSE, commit=head.stdout.strip()
    )
    assert code == 0, out
    fetched = tmp_path / COURSE_DIR
    assert (fetched / "helpers" / "notebook.py").is_file() and not fetched.is_symlink()
    assert (
        subprocess.run(
            ["git", "-C", str(fetched), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        == head.stdout.strip()
    )


def test_chapter_07s_cell_runs_the_pinned_commits_code(tmp_path):
    """The pinned commit, fetched with real git from this clone, has the prepare() the cell calls."""
    known = subprocess.run(["git", "-C", str(COURSE), "cat-file", "-e", COURSE_COMMIT])
    if known.returncode:
        pytest.skip(f"{COURSE} does not hold the pinned commit (not a clone of the course)")
    code, out, _ = run_cell(tmp_path, {}, {}, git="real", repo_url=COURSE, chapter="07_deploy")
    assert code == 0, out
    assert 'extras=("deploy",)' in setup_cell("07_deploy")
    assert (tmp_path / COURSE_DIR / "helpers" / "notebook.py").is_file()


def test_an_installed_course_is_used_wherever_the_kernel_runs(tmp_path):
    code, out, logged = run_cell(tmp_path, {}, {}, installed="1")
    assert code == 0, out
    assert "git" not in logged and not (tmp_path / COURSE_DIR).exists()


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

    from tools.badges import badges
    from tools.course import chapters
    from tools.release import P100_FIX_LINE, sync

    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        assert first.source.split("\n")[2] == badges(path.name), path
        assert f"blob/{COURSE_REF}/chapters/{path.name}" in badges(path.name)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert P100_FIX_LINE in params.source, path
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        assert sync([copy]) == [], f"{path}: run `python -m tools.release sync`"


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


def test_chapter_06_installs_the_gptq_and_awq_libraries_without_llama_cpp():
    """Chapter 06 needs llm-compressor (no deps) and compressed-tensors, not llama.cpp's
    10-minute compile, which is chapter 07's."""
    from helpers.notebook import extra_packages

    assert 'extras=("ptq",)' in setup_cell("06_gptq_awq")
    ptq = {name: no_deps for name, _, no_deps in extra_packages("ptq")}
    deploy = {name for name, _, _ in extra_packages("deploy")}
    assert "llama-cpp-python" not in ptq and "llama-cpp-python" in deploy
    assert ptq["llmcompressor"] is True and ptq["compressed-tensors"] is False
    assert set(ptq) <= deploy  # make and Binder install deploy: chapter 06 has what it needs
