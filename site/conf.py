"""Sphinx settings for the course website; `make site` (python -m tools.website build) uses them.

The source folder is generated: a home page made from README.md and a copy of chapters/.
Notebooks are rendered with the outputs stored in them and are never executed. Everything the
pages load ships with the site (MathJax included), so it reads offline.
"""

from helpers.notebook import COURSE_REF, COURSE_REPO_URL

project = "Fine-tuning LLMs on a budget GPU"
author = "the course's authors"
copyright = "the course's authors, Apache-2.0"
root_doc = "index"

extensions = [
    "myst_nb",
    # MathJax 3 copied into _static/mathjax (the default loads it from a CDN).
    "sphinx-mathjax-offline",
    # .nojekyll: GitHub Pages would otherwise drop _static/ and _images/.
    "sphinx.ext.githubpages",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The stored outputs are the book: never run a chapter here.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
# The chapters' own first heading is the page title; deeper headings get anchors for links.
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = project
html_last_updated_fmt = None
html_favicon = "favicon.svg"
# Light unless the reader picks dark (an empty mode makes the theme log a console error).
html_context = {"default_mode": "light"}
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "repository_url": COURSE_REPO_URL,
    "repository_branch": COURSE_REF,
    "path_to_docs": "",
    "use_repository_button": True,
    "use_download_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
# site/_static/course.css: wide code, outputs and tables scroll inside their box (tools/website.py).
html_static_path = ["_static"]
html_css_files = ["course.css"]
