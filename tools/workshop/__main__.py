"""The workshop command line (see ``tools/workshop/__init__.py``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from tools.workshop.manifest import MANIFEST, PARTIAL, check_folder, write_manifest
from tools.workshop.model_files import (
    FetchError,
    HubSource,
    Source,
    list_models,
    prepare_models,
    repo_folder,
)
from tools.workshop.timetable import (
    chapter_stems,
    default_timing_files,
    load_timings,
    measure,
    timetable,
)
from tools.workshop.wheels import (
    COURSE_EXTRAS,
    WheelhouseError,
    prepare_wheelhouse,
    wheelhouse_tag,
)


def profile_models(names: list[str]) -> dict[str, list[str]]:
    """``{model id: [profiles]}`` for the profiles named; the shipped tiny model is skipped.

    Raises:
        ValueError: an unknown profile (the valid ones are listed).
    """
    from helpers.profiles import PROFILES

    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise ValueError(f"--profiles {','.join(names)!r}: choose from {', '.join(PROFILES)}")
    models: dict[str, list[str]] = {}
    for name in names:
        if not PROFILES[name].is_local:
            models.setdefault(PROFILES[name].model_id, []).append(name)
    return models


def usage_lines(dest: Path, listed: dict, tags: list[str]) -> list[str]:
    """How a learner's machine uses the folder, for the manifest and the screen."""
    lines = [f"export HF_HOME={dest.resolve() / 'hf'} HF_HUB_OFFLINE=1  # models by hub id"]
    for repo_id, (revision, _) in listed.items():
        snapshot = repo_folder(dest, repo_id).resolve() / "snapshots" / revision
        lines.append(f"COURSE_MODEL_DIR={snapshot}  # {repo_id} as a plain folder")
    for tag in tags:
        wheels = dest.resolve() / "wheels" / tag
        lines.append(f"pip install --no-index --find-links {wheels} -e PATH/TO/COURSE")
    return lines


def prepare(args, source: Source | None = None, run=None) -> int:
    """List everything first (nothing written if the hub is unreachable), then download, then
    write the manifest last."""
    dest, source = Path(args.dir), source or HubSource()
    models = profile_models([p for p in args.profiles.split(",") if p])
    from helpers.profiles import PROFILES

    pinned = {repo: PROFILES[names[0]].revision for repo, names in models.items()}
    listed = list_models(pinned, source)  # raises FetchError before any write
    (dest / MANIFEST).unlink(missing_ok=True)  # the folder is unfinished until the end
    files = prepare_models(dest, listed, source)
    tags = []
    for platform in args.platform or [None]:
        if args.no_wheels:
            break
        kwargs = {"run": run} if run else {}
        wheel_files = prepare_wheelhouse(
            dest, platform, args.python_version, tuple(args.extras), args.with_torch, **kwargs
        )
        files |= wheel_files
        tags.append(wheelhouse_tag(platform, args.python_version))
    shutil.rmtree(dest / PARTIAL, ignore_errors=True)
    usage = usage_lines(dest, listed, tags)
    write_manifest(
        dest,
        {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "profiles": models,
            "models": {repo: {"revision": rev} for repo, (rev, _) in listed.items()},
            "wheelhouses": tags,
            "usage": usage,
            "files": files,
        },
    )
    print(f"{dest}: {len(files)} files, verified; manifest {MANIFEST} written.")
    print("On each machine:\n  " + "\n  ".join(usage))
    return 0


def main(argv: list[str] | None = None, source: Source | None = None, run=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.workshop",
        description="Prepare a room offline, check the folder, print measured chapter times.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="models and wheels for a room, into one folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--profiles", required=True, help="comma-separated, e.g. t4,gpu-4gb")
    p.add_argument(
        "--platform",
        action="append",
        help="the room's platform: linux-x86_64, linux-aarch64, windows-x86_64, macos-arm64, "
        "or comma-separated wheel tags; repeat for several (default: this machine's)",
    )
    p.add_argument("--python-version", help="the room's Python, e.g. 3.11")
    p.add_argument(
        "--extras", nargs="*", default=list(COURSE_EXTRAS), help="pyproject extras (default: all)"
    )
    p.add_argument("--with-torch", action="store_true", help="also torch and its CUDA wheels")
    p.add_argument("--no-wheels", action="store_true", help="models only")
    c = sub.add_parser("check", help="verify a prepared folder against its manifest")
    c.add_argument("dir", type=Path)
    m = sub.add_parser("measure", help="run chapters and record their wall times")
    m.add_argument("--label", default="cpu-tiny", help="the platform's column, e.g. colab-t4")
    m.add_argument("--profile", default="auto")
    m.add_argument("--out", type=Path, help="default build/timings/LABEL.json")
    m.add_argument("chapters", nargs="*")
    t = sub.add_parser("timetable", help="measured chapter times per platform")
    t.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, source, run)
    except (FetchError, WheelhouseError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _dispatch(args, source, run) -> int:
    if args.command == "prepare":
        return prepare(args, source, run)
    if args.command == "check":
        problems = check_folder(args.dir)
        print(
            "\n".join(problems)
            or f"{args.dir}: exactly the files the manifest lists, every sha256 matches"
        )
        return 1 if problems else 0
    if args.command == "measure":
        from helpers.paths import build_dir

        out = args.out or build_dir() / "timings" / f"{args.label}.json"
        print(f"wrote {measure(args.label, args.profile, args.chapters, out)}")
        return 0
    print(timetable(chapter_stems(), load_timings(args.files or default_timing_files())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
