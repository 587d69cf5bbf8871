"""The course website: every chapter with its stored outputs, built with Sphinx and MyST-NB.

``python -m tools.website build [OUT]`` (what ``make site`` runs) writes a source folder with a
home page (README.md's title, introduction and chapter table) and a copy of each
``chapters/NN_*.ipynb`` found at run time, then builds static HTML into ``OUT`` (default
``build/site``) with the settings in ``site/conf.py``. Notebooks are never executed: the site
shows the outputs committed with them, plots included. The launch badges come from each
chapter's first cell, where ``python -m tools.release sync`` writes them.

The site's copies are made for readers (``reader_notebook``): test markers and formatter or
linter pragmas (``# NBVAL_CHECK_OUTPUT``, ``# fmt: skip``, ``# noqa: E402``) are taken out of the
code they show, and every chapter's title reads ``NN · Title``. The notebooks themselves keep
them, where nbval and ruff read them. ``site/_static/course.css`` makes wide code, outputs and tables
scroll inside their box.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.notebook import COURSE_REF, COURSE_REPO_URL
from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR

ROOT = PACKAGE_DIR.parent
CONF_DIR = ROOT / "site"
DEFAULT_OUT = ROOT / "build" / "site"
# A markdown link whose target is relative: [text](target), target without a scheme or "#".
RELATIVE_LINK = re.compile(r"\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:|#)([^)\s]+)\)")


# A line that is only a test marker (nbval's NBVAL_CHECK_OUTPUT, NBVAL_SKIP, ...).
MARKER_LINE = re.compile(r"^\s*#\s*NBVAL_[A-Z_]+\s*$")
# A trailing pragma for a tool: ruff's noqa, the formatter's fmt, type checkers', coverage's.
PRAGMA = re.compile(
    r"\s*#\s*(?:noqa\b[^#]*|fmt:\s*(?:skip|off|on)|type:\s*ignore\S*|pragma:[^#]*"
    r"|NBVAL_[A-Z_]+)\s*$"
)
# A chapter's title, "NN · Title" or "Chapter NN: Title".
TITLE = re.compile(r"^#\s+(?:Chapter\s+)?(\d\d)\s*(?:·|:|\.|-)\s*(.+)$")


def reader_code(source: str) -> str:
    """A code cell's text as the site shows it: without test markers and tool pragmas."""
    lines = [line for line in source.split("\n") if not MARKER_LINE.match(line)]
    return "\n".join(PRAGMA.sub("", line) for line in lines)


def reader_title(source: str) -> str:
    """A chapter's first markdown cell with its title in the site's one style, ``# NN · Title``."""
    first, _, rest = source.partition("\n")
    found = TITLE.match(first.strip())
    return f"# {found[1]} · {found[2].strip()}\n{rest}" if found else source


def reader_notebook(path: Path):
    """A chapter as the site shows it (code without markers and pragmas, one title style);
    outputs, metadata and tags untouched."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = reader_code(cell.source)
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if first is not None:
        first.source = reader_title(first.source)
    return nb


def chapter_paths(chapters_dir: Path = CHAPTERS_DIR) -> list[Path]:
    """The chapters, in order: every ``NN_*.ipynb`` in ``chapters_dir`` at this moment."""
    return sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))


def _section(readme: str, title: str) -> str:
    """The ``## title`` section of a markdown text, heading included, up to the next ``## ``."""
    found = re.search(rf"^## {re.escape(title)}\s*$.*?(?=^## |\Z)", readme, flags=re.M | re.S)
    if found is None:
        raise ValueError(f"README.md: no '## {title}' section for the site's home page")
    return found.group(0).strip()


def _link_to_repo(match: re.Match) -> str:
    """A relative link that is not a chapter, pointed at the file in the course's repository."""
    target = match.group(1)
    if re.fullmatch(r"chapters/[0-9][0-9]_[^/]*\.ipynb", target):
        return match.group(0)  # a page of the site
    return f"]({COURSE_REPO_URL}/blob/{COURSE_REF}/{target.removeprefix('./')})"


def home_page(readme: str, chapters: list[str]) -> str:
    """The home page's MyST markdown: README's title, introduction and chapter table.

    Args:
        readme: README.md's text.
        chapters: chapter file names (``NN_name.ipynb``), in order, for the site's contents.
    Returns:
        Markdown that ends with a hidden table of contents listing every chapter.
    Raises:
        ValueError: README.md has no ``# `` title or no ``## Chapters`` section.
    """
    intro = re.match(r"\s*(# .*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    if intro is None:
        raise ValueError("README.md: it must open with a '# ' title for the site's home page")
    text = intro.group(1).strip() + "\n\n" + _section(readme, "Chapters")
    text = RELATIVE_LINK.sub(_link_to_repo, text)
    toc = "\n".join(f"chapters/{Path(name).stem}" for name in chapters)
    return f"{text}\n\n```{{toctree}}\n:hidden:\n:caption: Chapters\n\n{toc}\n```\n"


def write_source(src: Path, chapters: list[Path], readme: str) -> None:
    """Fill ``src`` with the home page and a reader's copy of each chapter (``reader_notebook``);
    a file that is not a notebook is copied as it is, for Sphinx to name it."""
    import nbformat

    (src / "chapters").mkdir(parents=True)
    (src / "index.md").write_text(home_page(readme, [p.name for p in chapters]))
    for path in chapters:
        try:
            nbformat.write(reader_notebook(path), src / "chapters" / path.name)
        except (ValueError, KeyError, AttributeError, nbformat.reader.NotJSONError):
            shutil.copy2(path, src / "chapters" / path.name)


def readable_messages(text: str, src: Path) -> str:
    """Sphinx's messages with the course's paths: ``chapters/NN_x.ipynb, cell 3`` for
    ``<src>/chapters/NN_x.ipynb:30002`` (MyST-NB numbers a notebook's lines cell * 10000 + line).
    """
    text = text.replace(f"{src}{os.sep}", "")
    return re.sub(r"\.ipynb:(\d+)", lambda m: f".ipynb, cell {int(m[1]) // 10000}", text)


def build(out: Path = DEFAULT_OUT, chapters: list[Path] | None = None, quiet: bool = True) -> Path:
    """Build the site into ``out``; warnings (a broken link, a missing page) are errors.

    The HTML is built in a temporary folder beside ``out`` and moved into place only when the
    build succeeds, so a failed build leaves the previous site (or none), never half of one.

    Args:
        out: the folder for the HTML; replaced when the build succeeds.
        chapters: the notebooks to publish; default every chapter in ``chapters/``.
        quiet: print only warnings and errors.
    Returns:
        ``out``, holding ``index.html`` and ``chapters/NN_name.html`` per chapter.
    Raises:
        ValueError: no chapters, or README.md lacks what the home page needs.
        RuntimeError: Sphinx reported a warning or an error (its messages are printed above).
    """
    chapters = chapter_paths() if chapters is None else chapters
    if not chapters:
        raise ValueError(f"{CHAPTERS_DIR}: no NN_*.ipynb chapters to publish")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        src, html = Path(tmp) / "src", Path(tmp) / "html"
        write_source(src, chapters, (ROOT / "README.md").read_text(encoding="utf-8"))
        args = ["-b", "html", "-c", str(CONF_DIR), "-W", "--keep-going", "-d", f"{tmp}/doctrees"]
        args += ["-q"] if quiet else []
        # A process of its own: Sphinx configures logging and warnings for the whole process.
        sphinx = [sys.executable, "-m", "sphinx", *args, str(src), str(html)]
        done = subprocess.run(sphinx, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(readable_messages(done.stderr, src))
        if done.returncode != 0:
            raise RuntimeError("the site build failed: see Sphinx's messages above")
        shutil.rmtree(out, ignore_errors=True)
        html.rename(out)
    return out


if __name__ == "__main__":
    if not sys.argv[1:2] == ["build"] or len(sys.argv) > 3:
        sys.exit("usage: python -m tools.website build [OUT]  (default build/site)")
    built = build(Path(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT_OUT)
    print(f"site: {built / 'index.html'}")
