"""Per-chapter run times per platform, from measured timing files only.

A timing file has the layout of ``build/results.json`` (``{chapter: {metric: value}}``): each
measured chapter carries ``wall_s`` (wall seconds, kernel start included) and ``status``, and
``_platform`` says where and how it was measured. The file's name is the platform's column
(``colab-t4.json``). ``measure`` writes one; the course's committed measurements live in
``data/timings/``. A platform without a file, or a chapter
without ``wall_s``, is printed as "not measured": nothing is estimated.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from helpers.paths import CHAPTERS_DIR, DATA_DIR, REPO_ROOT, build_dir
from tools.workshop.manifest import write_json_atomically

# The machines the course is written for (DESIGN.md), always shown as columns.
PLATFORMS = ("cpu-tiny", "colab-t4", "kaggle-t4x2", "kaggle-p100", "gpu-4gb")
NOT_MEASURED = "not measured"


def chapter_stems(chapters_dir: Path = CHAPTERS_DIR) -> list[str]:
    """The chapters as they are on disk now, in order (``["00_setup", ...]``)."""
    return [p.stem for p in sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))]


def default_timing_files() -> list[Path]:
    """The committed measurements, then this machine's own (``build/timings``)."""
    return sorted((DATA_DIR / "timings").glob("*.json")) + sorted(
        (build_dir() / "timings").glob("*.json")
    )


def load_timings(paths: list[Path]) -> dict[str, dict]:
    """Read timing files: ``{label: {"about": {...}, "chapters": {stem: (seconds, status)}}}``.

    The label is the file's name without ``.json``.

    Raises:
        ValueError: a file that is not JSON, or a ``wall_s`` that is not a number (names both).
    """
    found = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable timing file ({err})") from err
        about = data.get("_platform", {})
        chapters = {}
        for stem, metrics in data.items():
            if stem.startswith("_") or not isinstance(metrics, dict) or "wall_s" not in metrics:
                continue
            if not isinstance(metrics["wall_s"], int | float) or metrics["wall_s"] < 0:
                raise ValueError(f"{path}: {stem}.wall_s={metrics['wall_s']!r} is not seconds")
            chapters[stem] = (float(metrics["wall_s"]), metrics.get("status", "ok"))
        shown = Path(path).resolve()
        if shown.is_relative_to(REPO_ROOT):
            shown = shown.relative_to(REPO_ROOT)
        found[Path(path).stem] = {"about": about | {"file": str(shown)}, "chapters": chapters}
    return found


def _cell(entry: tuple[float, str] | None) -> str:
    if entry is None:
        return NOT_MEASURED
    seconds, status = entry
    text = f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return text if status == "ok" else f"{text} ({status})"


def timetable(stems: list[str], timings: dict[str, dict]) -> str:
    """A markdown table: one row per chapter, one column per platform, and a total row.

    The total is the sum only when every chapter ran without failing on that platform.
    """
    labels = list(PLATFORMS) + [k for k in timings if k not in PLATFORMS]
    rows = [["chapter", *labels], ["---"] * (len(labels) + 1)]
    for stem in stems:
        rows.append(
            [stem, *(_cell(timings.get(k, {}).get("chapters", {}).get(stem)) for k in labels)]
        )
    totals = []
    for label in labels:
        got = timings.get(label, {}).get("chapters", {})
        done = [got[s] for s in stems if s in got]
        complete = len(done) == len(stems) and all(status == "ok" for _, status in done)
        totals.append(_cell((sum(s for s, _ in done), "ok")) if complete else NOT_MEASURED)
    rows.append(["total", *totals])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    for label in labels:
        if label in timings:
            about = timings[label]["about"]
            notes = ", ".join(f"{k} {v}" for k, v in about.items() if k not in ("label", "file"))
            lines.append(f"\n{label}: {about['file']}" + (f" ({notes})" if notes else ""))
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_about(profile: str) -> dict:
    """Where a measurement is taken: CPU, cores, GPU, torch, profile, load, date."""
    import torch

    from tools.course import profile_label

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "profile": profile_label(profile),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "load_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }


def measure(label: str, profile: str, names: list[str] | None, out: Path) -> Path:
    """Run chapters with papermill (as ``make course`` does) and record each one's wall time.

    The file is rewritten after every chapter, so an interrupted run keeps what it measured.

    Args:
        label: the platform's name (the executed copies go to ``build/timing-runs/LABEL``).
        profile: the profile each chapter runs, ``"auto"`` as ``make course`` does.
        names: chapter stems or prefixes (None: every chapter).
        out: the timing file; its name is the timetable's column.
    Returns:
        The timing file written.
    """
    from tools.course import chapters, execute

    data = {"_platform": machine_about(profile)}
    run_dir = build_dir() / "timing-runs" / label
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in chapters(names):
        start, status = time.perf_counter(), "ok"
        try:
            execute(path, run_dir / path.name, {"PROFILE": profile})
        except Exception as err:  # noqa: BLE001 - a failed chapter is recorded as failed
            status = f"failed: {type(err).__name__}"
        data[path.stem] = {"wall_s": round(time.perf_counter() - start, 1), "status": status}
        if hasattr(os, "getloadavg"):  # how busy the machine was while it ran
            data["_platform"]["load_at_end"] = round(os.getloadavg()[0], 2)
        write_json_atomically(out, data)
        print(f"{path.stem}: {data[path.stem]['wall_s']} s {status}")
    return out
