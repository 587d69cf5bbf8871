"""The set-up cell that opens every chapter, kept here once, and what it runs on Colab/Kaggle.

A chapter cannot import ``helpers`` before the course is on the machine, so the set-up cell is
plain Python: it finds the course (a clone around the notebook) or fetches it at the pinned
``COURSE_REF`` beside the notebook, imports ``helpers`` from that folder only, then calls
``prepare()`` here, which installs what Colab or Kaggle lacks or has too old (never replacing
torch) and checks that torch can use the GPU. ``python -m helpers.notebook sync`` writes
``SETUP_CELL`` into every chapter, the launch badges into each first markdown cell and a
``P100_FIX`` line into each parameters cell, then regenerates ``workbook/`` from the chapters
(``helpers.workbook``); a test checks that every chapter is in sync.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR, REPO_ROOT

# The one place that says where the course lives and which version a notebook fetches: the
# set-up cell, every launch badge (chapters, workbook/, README) and the website derive from these
# two. A fork changes them here, then runs `python -m helpers.notebook sync` and
# `python -m helpers.workbook sync`.
COURSE_REPO_URL = "https://github.com/budget-finetuning/course"
COURSE_REF = "v0.1.0"  # a tag or commit of COURSE_REPO_URL
COURSE_DIR = "budget-finetuning-course"  # the folder the set-up cell fetches into
_GITHUB = "https://github.com/"
if not COURSE_REPO_URL.startswith(_GITHUB) or COURSE_REPO_URL.count("/") != 4:
    raise ValueError(f"COURSE_REPO_URL={COURSE_REPO_URL!r}: expected https://github.com/OWNER/NAME")
REPO_SLUG = COURSE_REPO_URL.removeprefix(_GITHUB)  # "owner/name", as Colab and Binder want it
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
# What a Colab or Kaggle image may lack or have too old; the set-up cell installs them at the
# versions `make test` installs (requirements.lock, written by `make lock`). torch is never
# installed or upgraded here.
SETUP_PACKAGES = (
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "safetensors",
    "ipywidgets",
)


def locked_versions(lock: Path) -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` line of a lock file (names lower-case).

    Raises:
        FileNotFoundError: the lock is missing (it says how to write one).
    """
    if not lock.is_file():
        raise FileNotFoundError(f"{lock} is missing: `make lock` writes it")
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M)
    return {name.lower().replace("_", "-"): version for name, version in pins}


LOCK_FILE = REPO_ROOT / "requirements.lock"
_LOCKED = locked_versions(LOCK_FILE)
TESTED_VERSIONS = {name: _LOCKED[name] for name in SETUP_PACKAGES}
NETWORK_ERRORS = ("resolve host", "name resolution", "NewConnectionError", "Network is unreachable")
P100_FIX_LINE = "P100_FIX = False  # True on a Kaggle P100: install torch's cu126 build (sm_60)"

SETUP_CELL = f'''\
# Set-up, the same in every chapter. In a clone of the course (make lab, Binder, CI) it only
# checks that `helpers` is the course's. On Colab or Kaggle it fetches the course at COURSE_REF
# beside the notebook, then installs what the image lacks or has too old (never torch).
import os
import subprocess
import sys

COURSE_REPO_URL = "{COURSE_REPO_URL}"
COURSE_REF = "{COURSE_REF}"  # the tag or commit to fetch
COURSE_DIR = "{COURSE_DIR}"


def is_course(root):
    return os.path.isfile(os.path.join(root, "helpers", "notebook.py"))


def fetch_course():
    import shutil

    git = [["init", "-q", COURSE_DIR], ["fetch", "-q", "--depth", "1", COURSE_REPO_URL, COURSE_REF]]
    for args in [*git, ["checkout", "-q", "FETCH_HEAD"]]:
        cmd = ["git", *(args if args[0] == "init" else ["-C", COURSE_DIR, *args])]
        if subprocess.run(cmd, capture_output=True).returncode:
            shutil.rmtree(COURSE_DIR, ignore_errors=True)
            raise SystemExit(
                f"Could not fetch the course ({{COURSE_REF}} of {{COURSE_REPO_URL}}). On Kaggle, "
                "turn on Internet in the notebook's settings; elsewhere check the network, "
                "COURSE_REPO_URL and COURSE_REF."
            )


def course_above(path):
    """The folder at or above ``path`` that holds the course (a clone), else None."""
    path = os.path.abspath(path)
    while not is_course(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if is_course(path) else None


root = course_above(".")
if root is None:
    if os.path.isdir(COURSE_DIR) and not is_course(COURSE_DIR):
        raise SystemExit(f"{{COURSE_DIR}}/ is not the course: rename it, then run this cell.")
    if not os.path.isdir(COURSE_DIR):
        fetch_course()
    root = os.path.abspath(COURSE_DIR)
for name in [m for m in sys.modules if m.split(".")[0] == "helpers"]:
    where = os.path.abspath(getattr(sys.modules[name], "__file__", None) or "")
    if not where.startswith(root + os.sep):  # a `helpers` from elsewhere is not the course's
        del sys.modules[name]
sys.path.insert(0, root)
from helpers.notebook import prepare  # noqa: E402

prepare(root, p100_fix=globals().get("P100_FIX", False))'''


def platform_name() -> str:
    """ "colab" or "kaggle" where the set-up cell installs packages; "" elsewhere."""
    from helpers.hardware import detect_platform

    found = detect_platform()
    return found if found in ("colab", "kaggle") else ""


def version_key(version: str) -> tuple[int, ...]:
    """A comparable key from a version's leading numbers ("5.0.0rc1" -> (5, 0, 0))."""
    release = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(x) for x in release.group(0).split(".")) if release else ()


def minimum_versions(root: Path) -> dict[str, str]:
    """The ``name>=version`` lower bounds that the course's pyproject.toml declares."""
    import tomllib

    deps = tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]["dependencies"]
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", d.replace(" ", "")) for d in deps)
    return {m.group(1).lower(): m.group(2) for m in found if m}


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_installs(minimum: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """What to install: each package the course needs that is absent or older than its bound.

    Returns:
        ``(name, installed version or None, version to install)`` per package, in order.
    """
    plan = []
    for name, tested in TESTED_VERSIONS.items():
        have = installed_version(name)
        if have is None or version_key(have) < version_key(minimum.get(name, "0")):
            plan.append((name, have, tested))
    return plan


def _pip_failure(stderr: str, specs: list[str], torch_version: str) -> str:
    """One sentence saying why pip failed and what to do."""
    if any(marker in stderr for marker in NETWORK_ERRORS):
        where = (
            "turn on Internet in the notebook's settings (Settings > Internet)"
            if platform_name() == "kaggle"
            else "check this machine's network"
        )
        return f"Could not download {', '.join(specs)}: {where}, then run this cell again."
    conflict = [line for line in stderr.splitlines() if "torch" in line.lower()]
    if conflict:
        return (
            f"Installing {', '.join(specs)} would need another torch than the installed "
            f"{torch_version}, which the course keeps ({conflict[-1].strip()}). Install a torch "
            "that fits yourself if you want to, restart the runtime, then run this cell again."
        )
    last = (stderr.strip().splitlines() or ["no message"])[-1]
    return f"pip could not install {', '.join(specs)}: {last}"


def pip_install(specs: list[str]) -> None:
    """``pip install`` the specs with a constraint that keeps the installed torch.

    Raises:
        SystemExit: pip failed; the message is one sentence saying what to do.
    """
    torch_version = installed_version("torch") or ""
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "keep-torch.txt"
        constraint.write_text(f"torch=={torch_version}\n" if torch_version else "")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraint), *specs]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(_pip_failure(done.stderr, specs, torch_version))


def install_missing(root: Path) -> None:
    """Install what is absent or older than pyproject's bounds, say what, and whether to restart."""
    plan = plan_installs(minimum_versions(root))
    torch_version = installed_version("torch")
    if not plan:
        print(f"Set-up: every package the course needs is installed; torch {torch_version} kept.")
        return
    pip_install([f"{name}=={version}" for name, _, version in plan])
    done = [f"{name} {new} (was {old or 'not installed'})" for name, old, new in plan]
    print(f"Set-up: installed {', '.join(done)}; torch {torch_version} kept.")
    replaced = [name for name, old, _ in plan if old and name in sys.modules]
    if replaced:
        print(
            f"Restart the runtime now ({', '.join(replaced)} was already imported at the old "
            "version), then run the notebook again from the top."
        )


def check_gpu(p100_fix: bool) -> None:
    """Say when torch has no kernels for the GPU; with ``p100_fix``, install the cu126 build."""
    from helpers.hardware import detect, gpu_count
    from helpers.profiles import missing_kernels_advice

    if not gpu_count():  # NVML: no CUDA context, so chapter 07 can still fork one per GPU
        return

    hw = detect()
    if hw.torch_supports_gpu:
        return
    if not (p100_fix and hw.fix_command):
        print(missing_kernels_advice(hw))
        return
    cmd = [sys.executable, "-m", *hw.fix_command.split()]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(_pip_failure(done.stderr, ["torch (cu126 build)"], hw.torch_version))
    print(
        f"Set-up: installed torch {hw.torch_version}'s cu126 build (it has sm_60 kernels). "
        "Restart the runtime now, then run the notebook again from the top."
    )


GPU_CAP_ENV = "COURSE_GPU_MEMORY_GIB"


def cap_gpu_memory(value: str | None = None) -> float | None:
    """Emulate a smaller card: cap this process's CUDA memory at ``$COURSE_GPU_MEMORY_GIB``
    GiB (``torch.cuda.set_per_process_memory_fraction``), e.g. ``14.7`` for a T4 on a larger
    GPU. Returns the cap applied, None when the variable is unset or there is no GPU.

    Raises:
        SystemExit: the value is not a number of GiB above 0 (the message names the variable).
    """
    value = os.environ.get(GPU_CAP_ENV, "") if value is None else value
    if not value.strip():
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = float("nan")
    if not gib > 0 or gib == float("inf"):
        raise SystemExit(f"{GPU_CAP_ENV}={value!r}: expected a number of GiB above 0, e.g. 14.7")
    import torch

    if not torch.cuda.is_available():
        print(f"Set-up: {GPU_CAP_ENV}={value} has no effect: there is no CUDA GPU.")
        return None
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib / total))
    print(
        f"Set-up: CUDA memory capped at {min(gib, total):.1f} of {total:.1f} GiB ({GPU_CAP_ENV})."
    )
    return min(gib, total)


def prepare(root: str | Path, p100_fix: bool = False) -> None:
    """What the set-up cell runs once ``helpers`` is importable from ``root``.

    Checks that ``helpers`` is the course's own copy in ``root``; on Colab or Kaggle installs
    what is missing or too old; on any machine, explains (or with ``p100_fix`` applies) the
    torch fix for a GPU the installed torch has no kernels for; with ``$COURSE_GPU_MEMORY_GIB``
    set, caps the GPU's memory (``cap_gpu_memory``).

    Raises:
        SystemExit: ``helpers`` came from elsewhere, an install failed, or the memory cap is not
            a number (one sentence each).
    """
    root = Path(root).resolve()
    if PACKAGE_DIR.parent.resolve() != root:
        raise SystemExit(
            f"`helpers` was imported from {PACKAGE_DIR}, not from the course in {root}: "
            "restart the runtime and run this cell first."
        )
    if platform_name():
        install_missing(root)
    check_gpu(bool(p100_fix))
    cap_gpu_memory()


def setup_cells(nb) -> list:
    """The code cells tagged ``setup`` in a notebook."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and "setup" in c.get("metadata", {}).get("tags", [])
    ]


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


def _sync_badges(nb, chapter: str) -> bool:
    """Put the badge line right under the first markdown cell's title; True if it changed."""
    cell = next(c for c in nb.cells if c.cell_type == "markdown")
    lines = [line for line in cell.source.split("\n") if "[![Open in Colab]" not in line]
    while len(lines) > 1 and lines[1] == "":
        lines.pop(1)  # the blank lines around the old badge line
    new = "\n".join([lines[0], "", badges(chapter), "", *lines[1:]])
    changed, cell.source = new != cell.source, new
    return changed


def _sync_p100_line(nb) -> bool:
    """Add the ``P100_FIX`` parameter to the parameters cell when it lacks one."""
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    if re.search(r"^P100_FIX\s*=", cell.source, flags=re.M):
        return False
    cell.source = cell.source.rstrip("\n") + "\n" + P100_FIX_LINE
    return True


def sync(paths=None) -> list[str]:
    """Write SETUP_CELL, the badges and the P100_FIX parameter into each chapter.

    Returns:
        The chapters changed.
    Raises:
        ValueError: a chapter without exactly one code cell tagged ``setup``.
    """
    import nbformat

    changed = []
    for path in paths or sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = setup_cells(nb)
        if len(cells) != 1:
            raise ValueError(f"{path}: expected one code cell tagged 'setup', found {len(cells)}")
        dirty = _sync_badges(nb, Path(path).name) | _sync_p100_line(nb)
        if cells[0].source != SETUP_CELL:
            cells[0].source, cells[0].outputs, dirty = SETUP_CELL, [], True
        if dirty:
            nbformat.write(nb, path)
            changed.append(str(path))
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python -m helpers.notebook sync")
    print("\n".join(sync()) or "every chapter's set-up cell is up to date")
    from helpers import workbook  # the workbook copies follow the chapters they were made from

    print("\n".join(workbook.sync()) or "every workbook notebook is up to date")
