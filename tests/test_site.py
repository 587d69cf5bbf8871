"""The course website: built from the chapters' stored outputs, then read in a real browser.

The browser tests drive the system's Chromium (Debian: ``apt-get install chromium``) through
Playwright's bundled driver; Playwright's own browser download is never used. They are skipped,
with the reason, when the ``site`` extra or Chromium is missing. ``make site-check`` runs them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest

pytest.importorskip("myst_nb", reason="the site extra is not installed: pip install -e '.[site]'")

from tools import website  # noqa: E402
from tools.badges import badges  # noqa: E402

CHAPTERS = website.chapter_paths()
# A stand-in for the badge images, which live on Colab's, Kaggle's and Binder's servers.
BADGE_STUB = '<svg xmlns="http://www.w3.org/2000/svg" width="90" height="20"/>'
# A badge's link target: [![alt](image)](target).
BADGE_TARGET = re.compile(r"\)\]\((https?://[^)\s]+)\)")
# The theme and parser use Sphinx APIs that Sphinx 11 will remove; not the course's concern.
pytestmark = pytest.mark.filterwarnings("ignore:.*Check CHANGES for Sphinx API")


def chromium_path() -> str | None:
    """The system Chromium: $COURSE_CHROMIUM, else chromium or chromium-browser on PATH."""
    found = os.environ.get("COURSE_CHROMIUM") or shutil.which("chromium")
    return found or shutil.which("chromium-browser")


class _Links(HTMLParser):
    """Every ``href`` and every ``id`` in an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"])
        if tag == "a" and found.get("href"):
            self.hrefs.append(found["href"])


def fetch(url: str) -> _Links:
    """The links and anchors of the page at ``url`` (none for a file that is not HTML)."""
    links = _Links()
    with urllib.request.urlopen(url) as response:
        if "html" in response.headers.get("Content-Type", ""):
            links.feed(response.read().decode())
    return links


# --- the build itself, no browser needed ------------------------------------------------------


def test_home_page_is_readme_table_with_every_chapter_in_the_contents():
    readme = "# Course\n\nIntro [data](data/DATA_CARD.md).\n\n## Chapters\n\n| a |\n\n## Other\nx\n"
    page = website.home_page(readme, ["00_a.ipynb", "08_new.ipynb"])
    assert page.startswith("# Course\n\nIntro")
    assert "## Other" not in page
    assert "chapters/00_a\nchapters/08_new\n```" in page  # the hidden table of contents
    assert "](https://github.com/" in page and "/data/DATA_CARD.md)" in page  # not a site page


def test_home_page_rejects_a_readme_without_its_chapter_table():
    with pytest.raises(ValueError, match="README.md: no '## Chapters' section"):
        website.home_page("# Course\n\n## Set-up\n", ["00_a.ipynb"])
    with pytest.raises(ValueError, match="README.md: it must open with a '# ' title"):
        website.home_page("no title\n## Chapters\n", ["00_a.ipynb"])


def test_chapter_list_is_read_at_run_time(tmp_path):
    for name in ["01_b.ipynb", "00_a.ipynb", "08_new.ipynb", "notes.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in website.chapter_paths(tmp_path)] == [
        "00_a.ipynb",
        "01_b.ipynb",
        "08_new.ipynb",
    ]


def test_build_messages_name_the_chapter_and_cell(tmp_path):
    message = f"{tmp_path}/src/chapters/08_x.ipynb:30002: WARNING: target not found\n"
    assert website.readable_messages(message, tmp_path / "src") == (
        "chapters/08_x.ipynb, cell 3: WARNING: target not found\n"
    )


def test_readers_copy_drops_test_markers_and_tool_pragmas_but_keeps_the_code():
    code = (
        "# NBVAL_CHECK_OUTPUT\n"
        "from helpers import data  # noqa: E402 - after the set-up cell\n"
        "table = [[1, 0], [0, 1]]  # fmt: skip\n"
        "f = lambda x: x  # noqa: E731\n"
        "print('# not a pragma')  # the reason, kept"
    )
    assert website.reader_code(code) == (
        "from helpers import data\n"
        "table = [[1, 0], [0, 1]]\n"
        "f = lambda x: x\n"
        "print('# not a pragma')  # the reason, kept"
    )
    assert website.reader_title("# Chapter 05: Evaluation, by hand\n\nbody") == (
        "# 05 · Evaluation, by hand\n\nbody"
    )
    assert website.reader_title("# 02 · LoRA\nx") == "# 02 · LoRA\nx"


def test_the_notebooks_keep_their_markers_for_nbval():
    text = "".join(p.read_text() for p in CHAPTERS)
    assert "NBVAL_CHECK_OUTPUT" in text  # the site's copies lose them, the chapters do not


class _VisibleText(HTMLParser):
    """The text a reader sees in a page: everything outside script, style and head."""

    def __init__(self) -> None:
        super().__init__()
        self.skip, self.parts = 0, []

    def handle_starttag(self, tag, attrs) -> None:
        self.skip += tag in ("script", "style", "head", "template")

    def handle_endtag(self, tag) -> None:
        self.skip -= tag in ("script", "style", "head", "template") and self.skip > 0

    def handle_data(self, data) -> None:
        if not self.skip:
            self.parts.append(data)


HIDDEN_FROM_READERS = re.compile(r"NBVAL|noqa|fmt:\s*(?:skip|off|on)|type:\s*ignore")


def machinery_shown(html: str) -> list[str]:
    """The test markers and tool pragmas a page shows its readers."""
    parser = _VisibleText()
    parser.feed(html)
    return HIDDEN_FROM_READERS.findall("".join(parser.parts))


def test_machinery_check_catches_a_marker_in_a_page():
    page = "<html><head><title>noqa</title></head><body><pre># NBVAL_CHECK_OUTPUT\nx = 1  "
    page += "# fmt: skip</pre><script>var noqa = 1;</script></body></html>"
    assert machinery_shown(page) == ["NBVAL", "fmt: skip"]


def test_failed_build_keeps_the_previous_site(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("previous")
    broken = tmp_path / "09_broken.ipynb"
    broken.write_text('{"cells": [')
    with pytest.raises(RuntimeError, match="the site build failed"):
        website.build(out, chapters=[broken])
    assert (out / "index.html").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["09_broken.ipynb", "site"]


# --- the built site in Chromium ---------------------------------------------------------------


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    """A quiet HTTP server for ``directory`` on 127.0.0.1, in a thread; shut it down after."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The site to test: $COURSE_SITE_DIR when set (make site-check), else a fresh build."""
    if os.environ.get("COURSE_SITE_DIR"):
        return Path(os.environ["COURSE_SITE_DIR"]).resolve()
    return website.build(tmp_path_factory.mktemp("site") / "html")


def test_build_has_a_page_per_chapter_ready_for_static_hosting(built):
    assert (built / "index.html").is_file()
    assert (built / ".nojekyll").is_file()  # GitHub Pages keeps _static/ and _images/
    for chapter in CHAPTERS:
        assert (built / "chapters" / f"{chapter.stem}.html").is_file(), chapter.name


def test_pages_show_no_test_markers_and_one_title_style(built):
    for chapter in CHAPTERS:
        html = (built / "chapters" / f"{chapter.stem}.html").read_text()
        assert machinery_shown(html) == [], chapter.name
    titles = re.findall(
        r'<a class="reference internal" href="chapters/[^"]+">([^<]+)</a>',
        (built / "index.html").read_text(),
    )
    sidebar = [t for t in titles if re.match(r"\d\d", t)]
    assert len(sidebar) >= len(CHAPTERS)
    assert all(re.match(r"\d\d · \S", t) for t in sidebar), sidebar


@pytest.fixture(scope="module")
def base_url(built):
    server = serve(built)
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium (apt-get install chromium, or set COURSE_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[site]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def badge_images() -> set[str]:
    """The badge image URLs, the only files a page may load from outside the site."""
    return set(re.findall(r"\[!\[[^\]]*\]\((https?://[^)\s]+)\)", badges("00_x.ipynb")))


def open_page(browser, base_url: str, path: str = ""):
    """Open a page of the site; returns (page, console errors, requests that left the site)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, outside = [], []
    allowed = badge_images()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(request_route):
        request_url = request_route.request.url
        if request_url.startswith(base_url):
            return request_route.continue_()
        if request_url in allowed:
            return request_route.fulfill(body=BADGE_STUB, content_type="image/svg+xml")
        outside.append(request_url)
        return request_route.abort()

    page.route("**/*", route)
    response = page.goto(base_url + path, wait_until="load")
    assert response is not None and response.status == 200, path
    page.wait_for_load_state("networkidle")
    return page, errors, outside


def stored_images(path: Path) -> int:
    """How many image outputs a notebook stores."""
    cells = json.loads(path.read_text())["cells"]
    outputs = [o for c in cells for o in c.get("outputs", [])]
    return sum(any(k.startswith("image/") for k in o.get("data", {})) for o in outputs)


def plot_problems(page, expected: int) -> list[str]:
    """Plots missing from the page, hidden, or whose file did not load."""
    plots = page.locator(".cell_output img")
    problems = [] if plots.count() == expected else [f"{plots.count()} plots, {expected} stored"]
    for i in range(plots.count()):
        plots.nth(i).scroll_into_view_if_needed()
        if not plots.nth(i).is_visible():
            problems.append(f"plot {i} is hidden")
        if not plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"):
            problems.append(f"plot {i} did not load")
    return problems


def badge_problems(found: list[str], chapter: str) -> list[str]:
    """Badge links that are not the course's for ``chapter`` (Colab, Kaggle, Binder, in order)."""
    problems = [] if len(found) == 3 else [f"{len(found)} badges, not 3"]
    if found != BADGE_TARGET.findall(badges(chapter)):
        problems.append(f"badges {found} are not tools.badges.badges({chapter!r})")
    for url in found:
        others = [p.name for p in CHAPTERS if p.name != chapter and p.name in url]
        if f"chapters/{chapter}" not in url or others:
            problems.append(f"badge {url} does not launch chapters/{chapter}")
    return problems


def page_problems(browser, base_url: str, chapter: Path) -> list[str]:
    """Everything wrong with a chapter's page: console errors, outside files, plots, badges."""
    page, errors, outside = open_page(browser, base_url, f"chapters/{chapter.stem}.html")
    problems = [f"console: {e}" for e in errors]
    problems += [f"loads {url} from outside the site" for url in outside]
    if page.locator("mjx-container").count() == 0 and "$" in chapter.read_text():
        problems.append("no formula was typeset")
    problems += plot_problems(page, stored_images(chapter))
    found = page.eval_on_selector_all(
        "article a:has(img[alt^='Open in'])", "links => links.map(a => a.href)"
    )
    shown = HIDDEN_FROM_READERS.findall(page.inner_text("article"))
    problems += [f"shows {'/'.join(sorted(set(shown)))} to readers"] if shown else []
    problems += [f"cut at the column's edge: {what}" for what in page.evaluate(CUT_OFF)]
    page.close()
    return problems + badge_problems(found, chapter.name)


# Code, outputs and tables wider than their box, or reaching past the article's right edge, that
# no box between them and the article scrolls within the column: cut off, or spilling over.
CUT_OFF = """() => {
  const edge = document.querySelector('article').getBoundingClientRect().right + 1;
  return [...document.querySelectorAll('article pre, article table')].filter(e => {
    if (e.scrollWidth <= e.clientWidth + 1 && e.getBoundingClientRect().right <= edge) return false;
    for (let box = e; box && box.tagName !== 'ARTICLE'; box = box.parentElement) {
      const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
      if (scrolls && box.getBoundingClientRect().right <= edge) return false;
    }
    return true;
  }).map(e => e.tagName.toLowerCase() + ': ' + e.textContent.trim().slice(0, 40));
}"""


def link_problems(base_url: str) -> tuple[set[str], list[str]]:
    """Crawl every page reachable from the home page and follow each link inside the site.

    Returns:
        The pages reached, and one line per link whose file or anchor is missing.
    """
    pages, todo, problems = {}, [base_url], []
    while todo:
        url = todo.pop()
        for href in pages.setdefault(url, fetch(url)).hrefs:
            target, fragment = urldefrag(urljoin(url, href))
            if not target.startswith(base_url):
                continue
            if target not in pages:
                try:
                    pages[target] = fetch(target)
                except urllib.error.HTTPError as error:
                    problems.append(f"{url} links to {href}: HTTP {error.code}")
                    pages[target] = _Links()
                    continue
                todo += [target] if target.endswith((".html", "/")) else []
            if fragment and fragment not in pages[target].ids:
                problems.append(f"{url} links to {href}: no such anchor")
    return set(pages), problems


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_page_reads_well(browser, base_url, chapter):
    assert page_problems(browser, base_url, chapter) == []


@pytest.mark.slow
def test_every_internal_link_resolves(browser, base_url):
    page, errors, outside = open_page(browser, base_url)
    home_links = page.eval_on_selector_all("article a", "links => links.map(a => a.href)")
    page.close()
    assert errors == [] and outside == []
    for chapter in CHAPTERS:  # README's chapter table links every chapter
        assert f"{base_url}chapters/{chapter.stem}.html" in home_links, chapter.name
    reached, problems = link_problems(base_url)
    assert problems == []
    assert {f"{base_url}chapters/{p.stem}.html" for p in CHAPTERS} <= reached


@pytest.mark.slow
def test_checks_catch_a_broken_page(browser, built, tmp_path):
    chapter = max(CHAPTERS, key=stored_images)  # the chapter with the most plots
    other = next(p.name for p in CHAPTERS if p != chapter)
    broken = shutil.copytree(built, tmp_path / "html")
    page = broken / "chapters" / f"{chapter.stem}.html"
    html = page.read_text()
    (broken / re.search(r"_images/[^\"]+\.png", html).group(0)).unlink()  # a lost plot
    html = html.replace(f"chapters/{chapter.name}", f"chapters/{other}", 1)  # a wrong badge
    html = html.replace(
        "</body>",
        '<a href="missing.html">m</a><a href="#no-such-anchor">a</a>'
        '<script>console.error("injected")</script>'
        '<script src="https://cdn.invalid/x.js"></script></body>',
    )
    wide = "x" * 400
    html = html.replace(
        "</article>",
        f'<pre style="overflow: visible"># NBVAL_CHECK_OUTPUT {wide}</pre></article>',
        1,
    )
    page.write_text(html)
    server = serve(broken)
    base_url = f"http://127.0.0.1:{server.server_port}/"
    try:
        problems = "\n".join(page_problems(browser, base_url, chapter))
        _, bad_links = link_problems(base_url)
    finally:
        server.shutdown()
        server.server_close()
    assert "console: injected" in problems
    assert "shows NBVAL to readers" in problems
    assert "cut at the column's edge: pre: # NBVAL_CHECK_OUTPUT xxx" in problems
    assert "loads https://cdn.invalid/x.js from outside the site" in problems
    assert "did not load" in problems
    assert f"does not launch chapters/{chapter.name}" in problems
    assert any("missing.html: HTTP 404" in line for line in bad_links)
    assert any("#no-such-anchor: no such anchor" in line for line in bad_links)
