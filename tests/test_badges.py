"""Every launch badge (README, chapters, workbook) opens the notebook it sits beside, at the
course's one repository URL and ref."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import nbformat
import pytest

from helpers.notebook import COURSE_REF
from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR
from tools.badges import REPO_SLUG, badge_urls
from tools.workbook import WORKBOOK_DIR, chapter_paths

README = PACKAGE_DIR.parent / "README.md"
# A badge is a linked image: [![alt](image)](target)
BADGE = re.compile(r"\[!\[([^\]]*)\]\(([^)\s]+)\)\]\(([^)\s]+)\)")
KINDS = {"colab.research.google.com": "colab", "kaggle.com": "kaggle", "mybinder.org": "binder"}


def badge_targets(text: str) -> list[tuple[str, str]]:
    """``(kind, target url)`` for every launch badge in a text."""
    found = []
    for _, _, target in BADGE.findall(text):
        host = urlparse(target).netloc.removeprefix("www.")
        if host in KINDS:
            found.append((KINDS[host], target))
    return found


def valid_targets() -> dict[str, str]:
    """Every badge URL the course may carry: ``{url: "folder/notebook"}``."""
    found = {}
    for path in chapter_paths():
        for folder in ("chapters", "workbook"):
            for url in badge_urls(path.name, folder).values():
                found[url] = f"{folder}/{path.name}"
    return found


@pytest.mark.parametrize("folder", [CHAPTERS_DIR, WORKBOOK_DIR], ids=["chapters", "workbook"])
def test_each_notebook_carries_its_own_three_badges_and_no_other(folder):
    for chapter in chapter_paths():
        nb = nbformat.read(folder / chapter.name, as_version=4)
        found = [t for c in nb.cells if c.cell_type == "markdown" for t in badge_targets(c.source)]
        want = badge_urls(chapter.name, folder.name)
        assert sorted(found) == sorted(want.items()), folder / chapter.name


def readme_problems(text: str) -> tuple[list[str], int]:
    """What is wrong with the badges of a README text, and how many badges it has."""
    problems, count, valid = [], 0, valid_targets()
    for n, line in enumerate(text.splitlines(), 1):
        found = badge_targets(line)
        named = re.findall(r"\]\(((?:chapters|workbook)/[0-9][0-9]_[^)]+\.ipynb)\)", line)
        for kind, url in found:
            count += 1
            if url not in valid:
                problems.append(
                    f"README.md:{n}: {kind} badge {url} opens no notebook of the course"
                )
            elif [valid[url]] != named:
                problems.append(f"README.md:{n}: {kind} badge opens {valid[url]}, row is {named}")
        if named and found and sorted(k for k, _ in found) != ["binder", "colab", "kaggle"]:
            problems.append(f"README.md:{n}: not the three badges (Colab, Kaggle, Binder)")
    return problems, count


def test_readme_badges_open_the_chapter_of_their_row():
    problems, count = readme_problems(README.read_text())
    assert problems == []
    if count == 0:
        pytest.skip("README.md carries no launch badge yet")


def test_badge_urls_follow_the_one_repository_setting():
    urls = badge_urls("02_lora.ipynb", "workbook")
    assert urls["colab"].endswith(f"/github/{REPO_SLUG}/blob/{COURSE_REF}/workbook/02_lora.ipynb")
    assert (
        urls["binder"]
        == f"https://mybinder.org/v2/gh/{REPO_SLUG}/{COURSE_REF}?labpath=workbook/02_lora.ipynb"
    )
    query = parse_qs(urlparse(urls["kaggle"]).query)
    # Kaggle documents no accelerator parameter for this link: only src, nothing invented.
    assert list(query) == ["src"]
    assert query["src"] == [
        f"https://github.com/{REPO_SLUG}/blob/{COURSE_REF}/workbook/02_lora.ipynb"
    ]


def test_a_wrong_badge_is_caught_and_bad_arguments_are_refused():
    lora, qlora = badge_urls("02_lora.ipynb"), badge_urls("03_qlora.ipynb")
    row = "| [LoRA](chapters/02_lora.ipynb) | " + " ".join(
        f"[![b](x.svg)]({u})" for u in (qlora["colab"], lora["kaggle"], lora["binder"])
    )
    (problem,), count = readme_problems(row)
    assert count == 3 and "colab badge opens chapters/03_qlora.ipynb" in problem
    stale = row.replace(qlora["colab"], qlora["colab"].replace(COURSE_REF, "v0.0.1"))
    assert "opens no notebook of the course" in readme_problems(stale)[0][0]
    two = "| [LoRA](chapters/02_lora.ipynb) | " + " ".join(
        f"[![b](x.svg)]({lora[k]})" for k in ("colab", "kaggle")
    )
    assert readme_problems(two) == (
        ["README.md:1: not the three badges (Colab, Kaggle, Binder)"],
        2,
    )
    with pytest.raises(ValueError, match="02_lora"):
        badge_urls("chapters/02_lora.ipynb")
    with pytest.raises(ValueError, match="folder=''"):
        badge_urls("02_lora.ipynb", "")
