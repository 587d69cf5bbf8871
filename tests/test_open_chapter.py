"""Every chapter's opening cell (``helpers.chapter.open_chapter``): the profiles a chapter stops
on, named in one table that follows the chapters' file names, and a bad stem refused."""

from __future__ import annotations

import pytest

from helpers import report
from helpers.chapter import STOPS, ProfileNotSupported, open_chapter
from helpers.paths import CHAPTERS_DIR


@pytest.fixture(autouse=True)
def _keep_report_chapter(monkeypatch):
    monkeypatch.setattr(report, "_chapter", report._chapter)
    monkeypatch.delenv("COURSE_MEMGUARD", raising=False)


def test_every_stop_names_a_chapter_file():
    stems = {p.stem for p in CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb")}
    assert set(STOPS) <= stems, sorted(set(STOPS) - stems)


@pytest.mark.parametrize("chapter", sorted(STOPS))
def test_a_chapter_stops_where_its_table_says(chapter):
    (profile,) = STOPS[chapter]
    with pytest.raises(
        ProfileNotSupported, match=rf"Chapter {chapter[:2]} .* on {profile}: .*PROFILE="
    ):
        open_chapter(chapter, profile)


def test_a_chapter_runs_elsewhere_and_says_on_what(capsys):
    profile = open_chapter("03_qlora", "t4-8b", max_steps=7)
    assert profile.name == "t4-8b" and profile.max_steps == 7
    assert capsys.readouterr().out.startswith("profile t4-8b: asked for by name")
    assert report._chapter == "03_qlora"


@pytest.mark.parametrize("stem", ["3_qlora", "03", "qlora"])
def test_a_bad_stem_is_refused(stem):
    with pytest.raises(ValueError, match=rf"chapter {stem!r}"):
        open_chapter(stem, "tiny")
