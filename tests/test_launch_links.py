"""Every way into the course names one repository and one release: the launch badges (README,
chapters, workbook), the website's repository button and links, and the set-up cell; the set-up
cell's pinned commit is in this repository's history. A fork repoints all of them with one
command (`python -m tools.release pin --repo ... --ref ...`), which a test runs on a copy."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.notebook import COURSE_COMMIT, COURSE_REF, COURSE_REPO_URL
from helpers.paths import PACKAGE_DIR
from tools import release
from tools.badges import REPO_SLUG

COURSE = PACKAGE_DIR.parent
# (repository, ref) as each launch service and GitHub spell them in a URL.
TARGETS = [
    re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([^/\s)]+)/"),
    re.compile(
        r"kaggle\.com/kernels/welcome\?src=https://github\.com/([\w.-]+/[\w.-]+)/blob/([^/\s)]+)/"
    ),
    re.compile(r"mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/([^?\s)/]+)"),
    re.compile(r"(?<![\w.-])github\.com/([\w.-]+/[\w.-]+)/blob/([^/\s)]+)/"),
]
SETUP = re.compile(r'^COURSE_(REPO_URL|REF|COMMIT) = "([^"]*)"', re.M)


def targets(text: str) -> set[tuple[str, str]]:
    """Every ``(owner/name, ref)`` a text launches or links to."""
    return {m.groups() for pattern in TARGETS for m in pattern.finditer(text)}


def course_texts(root: Path) -> dict[str, str]:
    """The texts that carry launch links: README, every chapter's and workbook notebook's cells."""
    texts = {"README.md": (root / "README.md").read_text()}
    for folder in ("chapters", "workbook"):
        for path in sorted((root / folder).glob("[0-9][0-9]_*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            texts[f"{folder}/{path.name}"] = "\n".join(c.source for c in nb.cells)
    return texts


def launch_problems(root: Path, slug: str, ref: str, commit: str) -> list[str]:
    """Every place under ``root`` that names another repository, ref or commit."""
    problems = []
    for name, text in course_texts(root).items():
        found = targets(text)
        if name != "README.md" and not found:
            problems.append(f"{name}: no launch badge")
        problems += [f"{name}: links {s}@{r}" for s, r in sorted(found) if (s, r) != (slug, ref)]
        cells = dict(SETUP.findall(text))
        if cells and cells != {
            "REPO_URL": f"https://github.com/{slug}",
            "REF": ref,
            "COMMIT": commit,
        }:
            problems.append(f"{name}: set-up cell names {cells}")
    return problems


def test_every_badge_the_site_and_the_set_up_cell_name_one_repository_and_release():
    assert launch_problems(COURSE, REPO_SLUG, COURSE_REF, COURSE_COMMIT) == []
    conf = runpy.run_path(str(COURSE / "site" / "conf.py"))["html_theme_options"]
    assert (conf["repository_url"], conf["repository_branch"]) == (COURSE_REPO_URL, COURSE_REF)
    from tools import website

    page = website.home_page(
        "# C\n\n[card](data/DATA_CARD.md)\n\n## Chapters\n\n|a|\n", ["00_a.ipynb"]
    )
    assert targets(page) == {(REPO_SLUG, COURSE_REF)}


def test_a_stale_link_is_caught():
    stale = (
        "[![Open in Colab](x.svg)](https://colab.research.google.com/github/"
        f"{REPO_SLUG}/blob/v0.0.9/chapters/00_setup.ipynb)"
    )
    assert targets(stale) == {(REPO_SLUG, "v0.0.9")}
    assert targets(f"https://mybinder.org/v2/gh/other/course/{COURSE_REF}?labpath=x") == {
        ("other/course", COURSE_REF)
    }


def test_the_pinned_commit_is_in_this_repository():
    known = subprocess.run(
        ["git", "-C", str(COURSE), "cat-file", "-e", f"{COURSE_COMMIT}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if known.returncode and "not a git repository" in known.stderr:
        pytest.skip(f"{COURSE} is not a git checkout")
    assert known.returncode == 0, f"COURSE_COMMIT {COURSE_COMMIT} is not in this repository"
    ancestor = subprocess.run(
        ["git", "-C", str(COURSE), "merge-base", "--is-ancestor", COURSE_COMMIT, "HEAD"]
    )
    assert ancestor.returncode == 0, "COURSE_COMMIT is not in HEAD's history"
    tag = subprocess.run(
        ["git", "-C", str(COURSE), "rev-parse", "-q", "--verify", f"refs/tags/{COURSE_REF}^{{}}"],
        capture_output=True,
        text=True,
    )
    if tag.returncode:
        pytest.skip(f"tag {COURSE_REF} is not in this clone (made when the course is released)")
    changed = subprocess.run(
        ["git", "-C", str(COURSE), "diff", "--name-only", COURSE_COMMIT, tag.stdout.strip()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # The tagged commit is the pinned one, or the pin's own commit on top of it.
    assert all(
        f == "helpers/notebook.py" or f.startswith(("chapters/", "workbook/")) for f in changed
    ), changed


@pytest.mark.slow
def test_a_fork_repoints_everything_with_one_command(tmp_path):
    tracked = subprocess.run(
        ["git", "-C", str(COURSE), "ls-files"], capture_output=True, text=True
    ).stdout.split()
    if not tracked:
        pytest.skip(f"{COURSE} is not a git checkout")
    fork = tmp_path / "fork"
    for name in tracked:
        if (COURSE / name).is_file():
            (fork / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(COURSE / name, fork / name)
    commit = "0123456789abcdef0123456789abcdef01234567"
    cmd = [sys.executable, "-m", "tools.release", "pin", "--commit", commit]
    cmd += ["--repo", "https://github.com/someone/my-course", "--ref", "v1.0-mine"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(fork), "HOME": str(tmp_path)}
    done = subprocess.run(cmd, cwd=fork, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert launch_problems(fork, "someone/my-course", "v1.0-mine", commit) == []
    assert launch_problems(fork, REPO_SLUG, COURSE_REF, COURSE_COMMIT) != []  # it did change
    with pytest.raises(ValueError, match="expected a full 40-hex commit id"):
        release.pin(commit="v1.0")
