"""A wheelhouse of the course's dependencies for a room's platform, torch only when asked.

pip resolves the whole set for the target platform first (``pip install --dry-run --report``,
which reads wheel metadata only), the torch family is dropped unless asked for (bitsandbytes,
peft and accelerate depend on torch, which the learners' machines already have or get from
their GPU's own index), then ``pip download --no-deps`` fetches exactly the resolved wheels,
each checked against the sha256 in pip's report before it leaves ``.partial``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from helpers.notebook import NO_DEPS_EXTRAS
from helpers.paths import PACKAGE_DIR
from tools.workshop.manifest import PARTIAL, file_hashes

# torch and what only torch pulls in (CUDA libraries, triton): gigabytes a room rarely needs.
TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# What goes in by default (`make workshop-prepare`): JupyterLab and the extras of chapters 06, 07
# and 09 (the set-up cell's CHAPTER_EXTRAS), plus what `make` installs with --no-deps
# (llm-compressor, NO_DEPS_EXTRAS), resolved without its declared dependencies. llama-cpp-python
# stays out: PyPI ships it as source only (no wheel for any platform of 0.3.36, checked with pip
# download --only-binary=:all:), so a room compiles it or copies the wheel `make` built on a
# machine of the same platform (~/.cache/budget-finetuning-course/wheels).
COURSE_EXTRAS = ("lab", "deploy", "sft", "harness")
SOURCE_ONLY = re.compile(r"^llama-cpp-python$")
Runner = Callable[[list[str]], subprocess.CompletedProcess]


class WheelhouseError(RuntimeError):
    """pip could not resolve or download the wheels; the message gives pip's reason."""


def _pip(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def requirements(extras: list[str], with_torch: bool, root: Path = PACKAGE_DIR.parent) -> list[str]:
    """The course's requirements from pyproject.toml: its dependencies plus the named extras.

    Raises:
        ValueError: an extra that pyproject.toml does not define (the valid ones are listed).
    """
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f"--extras {unknown}: pyproject.toml defines {sorted(optional)}")
    reqs = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    name = re.compile(r"^\s*([A-Za-z0-9_.-]+)")
    reqs = [r for r in reqs if not SOURCE_ONLY.match(name.match(r).group(1).lower())]
    return [r for r in reqs if with_torch or not TORCH_FAMILY.match(name.match(r).group(1))]


# pip takes each --platform tag literally (manylinux_2_28 does not imply the older manylinux_2_17
# wheels most packages ship), so a room's platform is a list of tags, newest first.
ROOM_PLATFORMS = {
    "linux-x86_64": [f"manylinux_2_{m}_x86_64" for m in range(35, 16, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"],
    "linux-aarch64": [f"manylinux_2_{m}_aarch64" for m in range(35, 16, -1)]
    + ["manylinux2014_aarch64"],
    "windows-x86_64": ["win_amd64"],
    "macos-arm64": [f"macosx_{v}_0_arm64" for v in range(15, 10, -1)]
    + [f"macosx_{v}_0_universal2" for v in range(15, 9, -1)],
}


def platform_tags(platform: str) -> list[str]:
    """The wheel tags of a room platform: a name of ``ROOM_PLATFORMS`` or comma-separated tags."""
    return ROOM_PLATFORMS.get(platform) or [t for t in platform.split(",") if t]


def target_flags(platform: str | None, python_version: str | None) -> list[str]:
    """pip's flags for another platform or Python (none: this machine's)."""
    flags = ["--only-binary=:all:"]
    if platform:
        flags += [a for tag in platform_tags(platform) for a in ("--platform", tag)]
        flags += ["--implementation", "cp"]
    if python_version:
        flags += ["--python-version", python_version]
    return flags


def _failure(done: subprocess.CompletedProcess, what: str) -> WheelhouseError:
    lines = [line for line in (done.stderr or "").strip().splitlines() if line.strip()]
    return WheelhouseError(f"pip could not {what}: {' / '.join(lines[-3:]) or 'no message'}")


def resolve(reqs: list[str], flags: list[str], with_torch: bool, run: Runner) -> list[dict]:
    """The wheels pip would install for the target: ``[{"name", "version", "sha256"}, ...]``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"]
        cmd += ["--report", str(report), "--target", str(Path(tmp) / "t"), *flags, *reqs]
        done = run(cmd)
        if done.returncode or not report.is_file():
            raise _failure(done, f"resolve {' '.join(reqs)} for {' '.join(flags)}")
        items = json.loads(report.read_text()).get("install", [])
    wheels = []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if with_torch or not TORCH_FAMILY.match(name.lower()):
            sha = item.get("download_info", {}).get("archive_info", {}).get("hashes", {})
            wheels.append({"name": name, "version": version, "sha256": sha.get("sha256")})
    return wheels


def wheelhouse_tag(platform: str | None, python_version: str | None) -> str:
    """The wheelhouse's folder name under ``wheels/``, e.g. ``linux-x86_64-py3.11``."""
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{(platform or 'this-machine').split(',')[0]}-py{version}"


def prepare_wheelhouse(
    dest: str | Path,
    platform: str | None = None,
    python_version: str | None = None,
    extras: tuple[str, ...] = ("lab",),
    with_torch: bool = False,
    run: Runner = _pip,
) -> dict[str, dict]:
    """Download the course's wheels for a platform into ``dest/wheels/TAG/``.

    Args:
        dest: the workshop folder.
        platform: a name of ``ROOM_PLATFORMS`` (``linux-x86_64``, ``windows-x86_64``,
            ``macos-arm64``) or comma-separated wheel tags; None for this machine's.
        python_version: the room's Python, e.g. ``"3.11"``; None for this interpreter's.
        extras: pyproject.toml extras to include (``lab`` brings JupyterLab).
        with_torch: include torch and its CUDA libraries.
        run: runs a pip command (tests pass a fake).
    Returns:
        ``{path relative to dest: {"sha256": ..., "size": ...}}`` per wheel.
    Raises:
        WheelhouseError: pip failed (no network, no wheel for the platform) or a wheel's sha256
            differs from pip's report; nothing unverified is left outside ``dest/.partial``.
    """
    dest, flags = Path(dest), target_flags(platform, python_version)
    tag = wheelhouse_tag(platform, python_version)
    wheels = resolve(requirements(list(extras), with_torch), flags, with_torch, run)
    no_deps = [spec for extra in extras for spec in NO_DEPS_EXTRAS.get(extra, ())]
    if no_deps:
        wheels += resolve(no_deps, [*flags, "--no-deps"], with_torch, run)
    staging = dest / PARTIAL / "wheels" / tag
    staging.mkdir(parents=True, exist_ok=True)
    pins = [f"{w['name']}=={w['version']}" for w in wheels]
    done = run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(staging)]
        + flags
        + pins
    )
    if done.returncode:
        raise _failure(done, f"download {len(pins)} wheels for {tag}")
    return _move_verified(dest, staging, dest / "wheels" / tag, wheels)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _move_verified(dest: Path, staging: Path, final: Path, wheels: list[dict]) -> dict[str, dict]:
    """Check each downloaded wheel against pip's sha256, then move it into ``final``."""
    expected = {(_normal(w["name"]), w["version"]): w["sha256"] for w in wheels}
    entries, final_files = {}, []
    for path in sorted(staging.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        sha256 = file_hashes(path)[0]
        want = expected.get((_normal(name), version))
        if want is not None and want != sha256:
            path.unlink()
            raise WheelhouseError(f"{path.name}: sha256 {sha256}, pip's index says {want}")
        final_files.append((path, sha256))
    missing = set(expected) - {
        (_normal(p.name.split("-")[0]), p.name.split("-")[1]) for p, _ in final_files
    }
    if missing:
        raise WheelhouseError(f"pip did not download {sorted(f'{n}=={v}' for n, v in missing)}")
    final.mkdir(parents=True, exist_ok=True)
    for path, sha256 in final_files:
        os.replace(path, final / path.name)
        entries[(final / path.name).relative_to(dest).as_posix()] = {
            "sha256": sha256,
            "size": (final / path.name).stat().st_size,
        }
    return entries
