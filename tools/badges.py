"""The launch badges (Colab, Kaggle, Binder) of every notebook, and README's launch links.

Every badge opens ``COURSE_REF`` of ``COURSE_REPO_URL``, both kept once in ``helpers.notebook``
(the set-up cell fetches from the same repository). ``tools.release`` writes the badges into
the chapters, ``tools.workbook`` into the workbook copies, ``tools.website`` shows them.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.notebook import COURSE_REF, COURSE_REPO_URL
from helpers.paths import PACKAGE_DIR

REPO_SLUG = COURSE_REPO_URL.removeprefix(
    "https://github.com/"
)  # "owner/name", as Colab and Binder want it
BINDER_URL = f"https://mybinder.org/v2/gh/{REPO_SLUG}/{COURSE_REF}"
# Badge images, as each service publishes them.
BADGE_IMAGES = {
    "colab": ("Open in Colab", "https://colab.research.google.com/assets/colab-badge.svg"),
    "kaggle": ("Open in Kaggle", "https://kaggle.com/static/images/open-in-kaggle.svg"),
    "binder": ("Open in Binder", "https://mybinder.org/badge_logo.svg"),
}
# Kaggle's import link (kaggle.com/kernels/welcome?src=...) documents no accelerator parameter;
# the accelerator IDs Kaggle documents ("NvidiaTeslaT4" = GPU T4 x2) belong to `kaggle kernels
# push` (kernel-metadata.json's machine_shape), not to this link. So the badge cannot preselect
# the T4: a learner picks Settings > Accelerator > "GPU T4 x2" after opening the notebook.


def badge_urls(chapter: str, folder: str = "chapters") -> dict[str, str]:
    """Where each launch badge of a notebook points, from COURSE_REPO_URL and COURSE_REF.

    Args:
        chapter: the notebook's file name, e.g. ``"02_lora.ipynb"``.
        folder: the folder that holds it in the repository, ``"chapters"`` or ``"workbook"``.
    Returns:
        ``{"colab": url, "kaggle": url, "binder": url}``, each opening ``folder/chapter`` at
        COURSE_REF.
    Raises:
        ValueError: ``chapter`` is not a bare ``.ipynb`` file name, or ``folder`` is empty.
    """
    if "/" in chapter or not chapter.endswith(".ipynb") or not folder.strip("/"):
        raise ValueError(
            f"badge_urls(chapter={chapter!r}, folder={folder!r}): expected a notebook file name "
            "such as '02_lora.ipynb' and a folder such as 'chapters'"
        )
    nb_path = f"{folder.strip('/')}/{chapter}"
    return {
        "colab": f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{COURSE_REF}/{nb_path}",
        "kaggle": f"https://kaggle.com/kernels/welcome?src={COURSE_REPO_URL}/blob/{COURSE_REF}/{nb_path}",
        "binder": f"{BINDER_URL}?labpath={nb_path}",
    }


def badges(chapter: str, folder: str = "chapters") -> str:
    """The launch badges (Colab, Kaggle, Binder) for a notebook, as one markdown line.

    Args:
        chapter: the notebook's file name, e.g. ``"02_lora.ipynb"``.
        folder: the folder that holds it, ``"chapters"`` or ``"workbook"``.
    """
    urls = badge_urls(chapter, folder)
    return " ".join(f"[![{BADGE_IMAGES[k][0]}]({BADGE_IMAGES[k][1]})]({urls[k]})" for k in urls)


# A course launch link in the README, whatever repository and ref it names: (prefix, rest).
_LAUNCH_LINK = re.compile(
    r"(https://colab\.research\.google\.com/github/|https://kaggle\.com/kernels/welcome\?src="
    r"https://github\.com/)[\w.-]+/[\w.-]+/blob/[^/\s)]+/|https://mybinder\.org/v2/gh/"
    r"[\w.-]+/[\w.-]+/[^?\s)/]+"
)


def sync_readme(path: Path | None = None) -> bool:
    """Point every launch badge in README.md at COURSE_REPO_URL and COURSE_REF; True if changed."""
    path = Path(path or PACKAGE_DIR.parent / "README.md")
    if not path.is_file():
        return False

    def current(match: re.Match) -> str:
        if match.group(1) is None:  # Binder's link
            return BINDER_URL
        return f"{match.group(1)}{REPO_SLUG}/blob/{COURSE_REF}/"

    text = path.read_text(encoding="utf-8")
    new = _LAUNCH_LINK.sub(current, text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
