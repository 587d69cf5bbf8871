"""Command line of ``tools.gpucheck`` (see the package's docstring)."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers.hardware import BUDGET_MARGIN_GIB, CARD_TOTAL_GIB, PLANNED_CUDA_CONTEXT_GIB
from helpers.paths import DATA_DIR, REPO_ROOT, build_dir
from tools.gpucheck import benchmark, cuda, readme, runner, summary
from tools.gpucheck.jobs import parse_jobs

MEASURED = DATA_DIR / "gpu" / "measured.json"
TWIN_MARKER = "shape_twin.json"


def budgets_for(profiles: set[str], context_gib: float) -> dict[str, float]:
    """Each profile's budget: the card's total less ``context_gib`` less the margin."""
    return {p: round(CARD_TOTAL_GIB[p] - context_gib - BUDGET_MARGIN_GIB, 2) for p in profiles}


def start_twins(profiles: set[str], work: Path) -> dict[str, subprocess.Popen | None]:
    """Build the missing shape twins in parallel (None: the twin is already built)."""
    procs = {}
    for p in sorted(profiles):
        if (build_dir() / "shapes" / p / TWIN_MARKER).is_file():
            procs[p] = None
            continue
        log = open(work / f"shapes_{p}.log", "w")  # noqa: SIM115 (the child owns it)
        cmd = [sys.executable, "-m", "helpers.shapes", "build", p]
        procs[p] = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return procs


def start_benchmark(work: Path) -> list[tuple[str, subprocess.Popen]]:
    """Both benchmark loops on the 7B twin, each in its own process."""
    twin = build_dir() / "shapes" / "t4-8b"
    out = []
    for loop in ("course", "peft"):
        cmd = [sys.executable, "-m", "tools.gpucheck.benchmark", loop, str(twin),
               str(work / f"benchmark_{loop}.json")]  # fmt: skip
        log = open(work / f"benchmark_{loop}.log", "w")  # noqa: SIM115
        out.append(
            (loop, subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
        )
    return out


def launch(args, work: Path, budgets: dict[str, float]) -> tuple[list, list, dict]:
    """Build twins; start each profile's chapters (and the benchmark) as its twin is ready."""
    jobs = parse_jobs(args.jobs)
    wanted = {p for p, _ in jobs} | ({"t4-8b"} if args.benchmark else set())
    twins = start_twins(wanted, work)
    runs, bench, failed = [], [], {}
    while twins:
        for p, proc in list(twins.items()):
            if proc is not None and proc.poll() is None:
                continue
            del twins[p]
            if proc is not None and proc.returncode:
                failed[p] = (
                    f"failed: shape twin build exited {proc.returncode} ({work}/shapes_{p}.log)"
                )
                continue
            for prof, ch in jobs:
                if prof == p:
                    run = runner.Run(prof, ch, budgets[prof], work / f"{prof}_{ch}")
                    runs.append(runner.start(run, REPO_ROOT, build_dir() / "shapes"))
            if p == "t4-8b" and args.benchmark:
                bench = start_benchmark(work)
        time.sleep(1)
    return runs, bench, failed


def collect_benchmark(bench: list, work: Path, deadline: float) -> dict:
    """Wait for the benchmark loops (killed at the deadline); their results beside Unsloth's."""
    loops = {}
    for loop, proc in bench:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = work / f"benchmark_{loop}.json"
        loops[loop] = json.loads(out.read_text()) if out.is_file() else {"status": "timeout"}
    return {"config": benchmark.CONFIG, "unsloth": benchmark.UNSLOTH, "model": "t4-8b shape twin",
            "loops": loops}  # fmt: skip


def commit_of(root: Path) -> str:
    """The course's commit (short), with ``+dirty`` when the tree has changes; "unknown"
    without git. ``$COURSE_COMMIT`` names it for a copy of the course without its git folder."""
    if os.environ.get("COURSE_COMMIT", "").strip():
        return os.environ["COURSE_COMMIT"].strip()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()  # fmt: skip
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_command(args) -> int:
    """Measure: CUDA context, twins, chapters side by side, benchmark; write the JSON."""
    gpu, torch_version = cuda.require_cuda()
    if importlib.util.find_spec("papermill") is None:
        print("gpucheck: papermill is not importable: install it (and ipykernel).", file=sys.stderr)
        return cuda.NO_CUDA_EXIT
    deadline = time.time() + args.timeout
    work = build_dir() / "gpucheck"
    work.mkdir(parents=True, exist_ok=True)
    context = cuda.measure_context()
    print(f"gpucheck: {gpu}, torch {torch_version}, CUDA context {context} GiB")
    jobs = parse_jobs(args.jobs)
    budgets = budgets_for({p for p, _ in jobs}, context or PLANNED_CUDA_CONTEXT_GIB)
    runs, bench, failed = launch(args, work, budgets)
    runner.wait_all(runs, args.per_run_timeout, deadline)
    rows = [summary.summarize(r.folder, r.profile, r.chapter, r.budget_gib,
                              r.process.returncode, r.timed_out) for r in runs]  # fmt: skip
    rows += [summary.failed_row(p, ch, budgets[p], failed[p]) for p, ch in jobs if p in failed]
    doc = {"gpu": gpu, "torch": torch_version, "date": datetime.date.today().isoformat(),
           "commit": commit_of(REPO_ROOT), "cuda_context_gib": context, "budgets": budgets,
           "runs": rows}  # fmt: skip
    if bench:
        doc["benchmark"] = collect_benchmark(bench, work, deadline)
    summary.write_atomic(Path(args.out), doc)
    print(summary.table(doc))
    print(f"gpucheck: wrote {args.out}; logs in {work}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpucheck", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="measure every chapter on the GPU profiles it claims")
    p_run.add_argument(
        "--jobs", help="PROFILE:CHAPTER pairs, e.g. 't4:01,gpu-4gb:03' (default: all)"
    )
    p_run.add_argument("--timeout", type=float, default=400, help="global deadline, seconds")
    p_run.add_argument("--per-run-timeout", type=float, default=360, help="seconds per chapter")
    p_run.add_argument("--benchmark", action="store_true", help="also the Unsloth-config benchmark")
    p_run.add_argument("--out", default=str(MEASURED))
    p_readme = sub.add_parser("readme", help="rewrite README's measured section from the JSON")
    p_readme.add_argument("--file", default=str(MEASURED))
    args = parser.parse_args(argv)
    try:
        if args.command == "readme":
            changed = readme.rewrite(
                REPO_ROOT / "README.md", json.loads(Path(args.file).read_text())
            )
            print(f"README.md {'rewritten' if changed else 'unchanged'} from {args.file}")
            return 0
        return run_command(args)
    except cuda.NoCudaError as err:
        print(f"gpucheck: {err}", file=sys.stderr)
        return cuda.NO_CUDA_EXIT
    except ValueError as err:
        print(f"gpucheck: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
