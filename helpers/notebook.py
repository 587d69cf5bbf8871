"""The set-up cell that opens every chapter, kept here once, and what it runs on Colab/Kaggle.

A chapter cannot import ``helpers`` before the course is on the machine, so the set-up cell is
plain Python: it finds the course (a clone around the notebook, else an installed course, else a
copy fetched at the pinned ``COURSE_COMMIT`` beside the notebook), imports ``helpers`` from that
folder only, then calls ``prepare()`` here, which installs what Colab or Kaggle lacks or has too
old (never replacing torch), installs the chapter's extras (``CHAPTER_EXTRAS``) and checks that
torch can use the GPU. The course's maintainers write this cell into every chapter with
``python -m tools.release sync`` and pin a release's commit with ``python -m tools.release pin``
(the course's machinery, outside the package learners import).

    python -m helpers.notebook install-extras deploy   # what the set-up cell installs (Binder)
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.paths import PACKAGE_DIR, REPO_ROOT

# The one place that says where the course lives and which version a notebook fetches: the
# set-up cell, every launch badge (chapters, workbook/, README: tools/badges.py) and the website
# (site/conf.py, tools/website.py) derive from these. The badges open COURSE_REF (a tag); the
# set-up cell fetches COURSE_COMMIT, the full commit of that release's code, and checks what it
# got, so a tag moved later changes nothing. A release: commit, `python -m tools.release pin`
# (writes HEAD's commit here and syncs every chapter, the workbook and README's badges), commit
# that, tag it COURSE_REF, push both. A fork: `python -m tools.release pin --repo URL --ref TAG`.
COURSE_REPO_URL = "https://github.com/budget-finetuning/course"
COURSE_REF = "v0.1.0"  # the tag the badges and the website open
COURSE_COMMIT = "eeac906afcca8ae7521e4ed7bc75435803a4333b"  # the commit the set-up cell fetches
COURSE_DIR = "budget-finetuning-course"  # the folder the set-up cell fetches into
_GITHUB = "https://github.com/"
if not COURSE_REPO_URL.startswith(_GITHUB) or COURSE_REPO_URL.count("/") != 4:
    raise ValueError(f"COURSE_REPO_URL={COURSE_REPO_URL!r}: expected https://github.com/OWNER/NAME")
if not re.fullmatch(r"[0-9a-f]{40}", COURSE_COMMIT):
    raise ValueError(f"COURSE_COMMIT={COURSE_COMMIT!r}: expected a full 40-hex commit id")
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
# What some chapters need beyond SETUP_PACKAGES, by pyproject.toml extra. The set-up cell of a
# chapter listed here installs them on Colab and Kaggle (lock versions; llama-cpp-python built
# once per machine, see llama_cpp_wheel) and says which are missing anywhere else; a chapter asks
# missing_extras(...) which of its sections can run.
CHAPTER_EXTRAS = {
    "06_gptq_awq": ("ptq",),  # no llama.cpp compile: that is chapter 07's
    "07_deploy": ("deploy",),
    "09_your_data": ("sft", "harness"),
}
# Installed with --no-deps, as the Makefile does (LLMCOMPRESSOR there): llm-compressor 0.14
# declares transformers<=5.17, accelerate==1.15 and datasets<=5.0.1, and would replace the
# course's newer ones; its GPTQ and AWQ paths run with them (tests/test_gptq_awq.py,
# tests/test_awq_library.py). Of its own dependencies the GPTQ and AWQ twins need only
# compressed-tensors and loguru (the deploy extra); pyyaml, requests, pillow, tqdm and numpy
# come with the course or the image, auto-round and nvidia-ml-py are never imported by them.
NO_DEPS_EXTRAS = {"deploy": ("llmcompressor==0.14.0",), "ptq": ("llmcompressor==0.14.0",)}
# llama-cpp-python compiles llama.cpp: the Makefile's LLAMA_CPP and LLAMA_CMAKE_ARGS (portable:
# AVX2, no -march=native), into the same wheel cache, so a wheel `make` built is reused.
LLAMA_CPP = "llama-cpp-python==0.3.36"
LLAMA_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
WHEEL_CACHE_ENV = "COURSE_WHEELS"
# What the Makefile says of the compile on the course's 2-core machine (not re-timed here).
LLAMA_BUILD_TIME = "about 10 CPU-minutes"
# Why each package of an extra could not be installed in this kernel: {name: one sentence}.
_INSTALL_FAILURES: dict[str, str] = {}
NETWORK_ERRORS = ("resolve host", "name resolution", "NewConnectionError", "Network is unreachable")

# The set-up cell's text; {braces} are filled by setup_cell() (doubled ones are the cell's own).
_SETUP_TEMPLATE = '''\
# Set-up, the same in every chapter. In a clone of the course (make lab, CI) or where the course
# is installed (Binder, pip install .) it uses that copy. On Colab or Kaggle it fetches the course
# at COURSE_COMMIT beside the notebook, then installs what the image lacks or has too old (never
# torch). A failure ends in one sentence: what went wrong, and what to do.
import os
import subprocess
import sys

COURSE_REPO_URL = "{url}"
COURSE_REF = "{ref}"  # the release the launch badges open
COURSE_COMMIT = "{commit}"  # the commit fetched: that release's code
COURSE_DIR = "{folder}"
# What git's message means, and the words that say so (the first match wins).
GIT_REASONS = [
    ("the repository was not found (or is private): check COURSE_REPO_URL",
     ["not found", "404", "not appear to be a git repository", "could not read username"]),
    ("the repository has no commit COURSE_COMMIT: check COURSE_COMMIT",
     ["not our ref", "remote ref", "unadvertised object", "bad object"]),
    ("the network is unreachable: check it (on Kaggle: turn on Internet in the notebook's settings)",
     ["resolve host", "failed to connect", "unreachable", "timed out", "refused", "unable to access"]),
]


def is_course(root):
    return os.path.isfile(os.path.join(root, "helpers", "notebook.py"))


def git(*args):
    """Run git; it never waits on a prompt (no terminal prompt, no credential helper)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
    cmd = ["git", "-c", "credential.helper=", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SystemExit("Could not fetch the course: git is not installed here.") from None


def fetch_course():
    import shutil

    steps = [["init", "-q", COURSE_DIR], ["fetch", "-q", "--depth", "1", COURSE_REPO_URL, COURSE_COMMIT],
             ["checkout", "-q", "FETCH_HEAD"], ["rev-parse", "HEAD"]]
    for args in steps:
        done = git(*(args if args[0] == "init" else ["-C", COURSE_DIR, *args]))
        said = [line for line in done.stderr.splitlines() if line.strip()] or ["no message"]
        said = next((line for line in said if line.startswith("fatal:")), said[-1])
        if args[0] == "rev-parse" and not done.returncode and done.stdout.strip() != COURSE_COMMIT:
            done.returncode, said = 1, f"fetched {{done.stdout.strip()}}"
        if done.returncode:
            shutil.rmtree(COURSE_DIR, ignore_errors=True)
            reason = next((r for r, words in GIT_REASONS if any(w in said.lower() for w in words)),
                          "git failed")
            raise SystemExit(f"Could not fetch the course (commit {{COURSE_COMMIT[:12]}} of "
                             f"{{COURSE_REPO_URL}}): {{reason}}; git said: {{said.strip()}}")


def course_above(path):
    """The folder at or above ``path`` that holds the course (a clone), else None."""
    path = os.path.abspath(path)
    while not is_course(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if is_course(path) else None


def installed_course():
    """Where an installed course keeps `helpers` (its clone, if editable), else None."""
    import importlib.metadata
    import json
    from urllib.parse import unquote, urlparse

    try:
        dist = importlib.metadata.distribution("budget-finetuning-course")
    except importlib.metadata.PackageNotFoundError:
        return None
    origin = json.loads(dist.read_text("direct_url.json") or "{{}}")
    editable = origin.get("dir_info", {{}}).get("editable")
    root = unquote(urlparse(origin["url"]).path) if editable else str(dist.locate_file(""))
    return os.path.abspath(root) if is_course(root) else None


root = course_above(".") or installed_course()
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
from helpers.notebook import prepare

prepare(root, p100_fix=globals().get("P100_FIX", False){extras})'''


def setup_cell(chapter: str = "") -> str:
    """The set-up cell of a chapter (its stem, e.g. ``"07_deploy"``), as ``sync`` writes it.

    It is the same in every chapter but for the extras its last line asks ``prepare`` for
    (``CHAPTER_EXTRAS``).
    """
    extras = CHAPTER_EXTRAS.get(chapter, ())
    listed = ", ".join(f'"{name}"' for name in extras)
    return _SETUP_TEMPLATE.format(
        url=COURSE_REPO_URL,
        ref=COURSE_REF,
        commit=COURSE_COMMIT,
        folder=COURSE_DIR,
        extras=f", extras=({listed}{',' * (len(extras) == 1)})" if extras else "",
    )


SETUP_CELL = setup_cell()  # the cell of a chapter that needs no extra


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
    # pip's resolver names the package whose requirement on torch cannot be met.
    conflict = [line for line in stderr.splitlines() if re.search(r"depends on torch\b", line)]
    if conflict:
        return (
            f"Installing {', '.join(specs)} would need another torch than the installed "
            f"{torch_version}, which the course keeps ({conflict[-1].strip()}). Install a torch "
            "that fits yourself if you want to, restart the runtime, then run this cell again."
        )
    last = (stderr.strip().splitlines() or ["no message"])[-1]
    return f"pip could not install {', '.join(specs)}: {last}"


def pip_install(specs: list[str], options: tuple[str, ...] | list[str] = ()) -> None:
    """``pip install`` the specs (with pip ``options``) and a constraint that keeps the
    installed torch.

    Raises:
        SystemExit: pip failed; the message is one sentence saying what to do.
    """
    torch_version = installed_version("torch") or ""
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "keep-torch.txt"
        constraint.write_text(f"torch=={torch_version}\n" if torch_version else "")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraint), *options]
        cmd += specs
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


def extra_packages(extra: str, root: Path = REPO_ROOT) -> list[tuple[str, str, bool]]:
    """What the set-up cell installs for a pyproject.toml extra.

    Returns:
        ``(distribution name, pip spec, no_deps)`` per package: the extra's packages at the
        versions requirements.lock pins (else as pyproject.toml declares them), then
        ``NO_DEPS_EXTRAS``'s.
    Raises:
        ValueError: an extra that pyproject.toml does not define (the valid ones are named).
    """
    import tomllib

    project = tomllib.loads((Path(root) / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    if extra not in optional:
        raise ValueError(f"extra {extra!r}: pyproject.toml defines {sorted(optional)}")
    found = []
    for requirement in optional[extra]:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?", requirement)
        name, bracket = match.group(1).lower().replace("_", "-"), match.group(2) or ""
        spec = f"{name}{bracket}=={_LOCKED[name]}" if name in _LOCKED else requirement
        found.append((name, spec, False))
    for spec in NO_DEPS_EXTRAS.get(extra, ()):
        found.append((spec.split("==")[0].lower(), spec, True))
    return found


def wheel_cache() -> Path:
    """Where llama-cpp-python's wheel is kept: ``$COURSE_WHEELS``, else the Makefile's cache."""
    default = Path.home() / ".cache" / "budget-finetuning-course" / "wheels"
    return Path(os.environ.get(WHEEL_CACHE_ENV) or default)


def llama_cpp_wheel(cache: Path | None = None) -> Path:
    """llama-cpp-python's wheel from ``cache``, compiled there first when it has none.

    The compile (``LLAMA_BUILD_TIME``) runs once per machine: a lock file makes a second kernel
    wait for the first one's build instead of starting its own, and a wheel already in the cache
    (``make`` builds into the same one) is used as it is.

    Raises:
        SystemExit: the compile failed (pip's reason in one sentence).
    """
    import fcntl  # Linux and macOS: where Colab, Kaggle and Binder run
    import time

    cache = Path(cache or wheel_cache())
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{LLAMA_CPP.split('==')[0].replace('-', '_')}-{LLAMA_CPP.split('==')[1]}-*.whl"
    with open(cache / ".llama-cpp-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(cache.glob(pattern))
        if found:
            print(f"Set-up: llama.cpp is already built ({found[-1]}): not compiled again.")
            return found[-1]
        print(
            f"Set-up: compiling llama.cpp ({LLAMA_CPP}) once for this machine, "
            f"{LLAMA_BUILD_TIME} (wall time divides by the cores); the wheel is kept in {cache}.",
            flush=True,
        )
        start = time.monotonic()
        env = {**os.environ, "CMAKE_ARGS": LLAMA_CMAKE_ARGS}
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(cache), LLAMA_CPP]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = sorted(cache.glob(pattern))
        if done.returncode or not found:
            raise SystemExit(_pip_failure(done.stderr or "no wheel was written", [LLAMA_CPP], ""))
        print(f"Set-up: llama.cpp compiled in {(time.monotonic() - start) / 60:.1f} min.")
        return found[-1]


def install_extras(extras: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Install the packages of ``extras`` that are not installed, never replacing torch.

    A package that cannot be installed is recorded (``missing_extras`` reports it) and the rest
    go on: the chapter's other sections still run.

    Returns:
        ``{name: why}`` for each package that could not be installed.
    """
    failed = {}
    for extra in extras:
        for name, spec, no_deps in extra_packages(extra):
            if installed_version(name) is not None:
                continue
            try:
                options = ["--no-deps"] if no_deps else []
                if name == LLAMA_CPP.split("==")[0]:
                    options += ["--find-links", str(llama_cpp_wheel().parent)]
                pip_install([spec], options)
                print(f"Set-up: installed {spec} (chapter extra {extra!r}).")
            except SystemExit as error:
                failed[name] = _INSTALL_FAILURES[name] = str(error)
                print(f"Set-up: {spec} was not installed, the rest goes on: {error}")
    return failed


def missing_extras(*extras: str) -> dict[str, str]:
    """Which packages of the named pyproject.toml extras this kernel lacks, and why.

    A chapter calls it after its set-up cell, e.g. ``missing_extras("deploy")``, and skips,
    with that sentence, the sections whose library is missing.

    Returns:
        ``{distribution name: why}``: the set-up cell's install failure when there was one, else
        how to install it. Empty when every package is installed.
    Raises:
        ValueError: an extra that pyproject.toml does not define.
    """
    missing = {}
    for extra in extras:
        for name, spec, no_deps in extra_packages(extra):
            if installed_version(name) is None:
                how = f"pip install {'--no-deps ' if no_deps else ''}'{spec}'"
                missing[name] = _INSTALL_FAILURES.get(name) or f"{name} is not installed ({how})"
    return missing


def check_gpu(p100_fix: bool) -> None:
    """Say when torch has no kernels for the GPU; with ``p100_fix``, install the cu126 build."""
    from helpers.hardware import detect, gpu_count
    from helpers.profiles import missing_kernels_advice

    if not gpu_count():  # NVML: no CUDA context, so chapter 08 can still fork one per GPU
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


def prepare(root: str | Path, p100_fix: bool = False, extras: tuple[str, ...] = ()) -> None:
    """What the set-up cell runs once ``helpers`` is importable from ``root``.

    Checks that ``helpers`` is the course's own copy in ``root``; on Colab or Kaggle installs
    what is missing or too old; on any machine, explains (or with ``p100_fix`` applies) the
    torch fix for a GPU the installed torch has no kernels for; with ``$COURSE_GPU_MEMORY_GIB``
    set, caps the GPU's memory (``cap_gpu_memory``). The chapter's ``extras`` are installed on
    Colab and Kaggle (``install_extras``: a failure is recorded, not raised); elsewhere the
    missing ones are named (Binder installs them when its image is built, a clone with ``make``).

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
        install_missing(REPO_ROOT)  # an installed course keeps pyproject.toml in its share/
        install_extras(extras)
    else:
        missing = missing_extras(*extras)
        if missing:
            print(f"Set-up: not installed here: {'; '.join(missing.values())}.")
    check_gpu(bool(p100_fix))
    cap_gpu_memory()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.notebook")
    sub = parser.add_subparsers(dest="command", required=True)
    p_extras = sub.add_parser(
        "install-extras", help="install extras as the set-up cell does (Binder's postBuild)"
    )
    p_extras.add_argument("extras", nargs="+", help="pyproject.toml extras, e.g. deploy")
    args = parser.parse_args(argv)
    try:
        failed = install_extras(tuple(args.extras))
    except ValueError as error:
        parser.error(str(error))
    for name, why in failed.items():
        print(f"{name} was not installed: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
