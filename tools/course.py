"""Run the chapters with papermill: the whole course, a test copy, or one chapter in place.

    python -m tools.course run [--profile auto] [CHAPTER ...]   # make course
    python -m tools.course prepare OUT_DIR [--profile tiny]     # copies for the test suite
    python -m tools.course refresh chapters/NN_x.ipynb ...      # re-run a chapter in place

``run`` executes each chapter into ``build/``, times it, and prints a table with the numbers
each chapter recorded through ``helpers.report`` (also in ``build/results.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
import papermill

from helpers.paths import CHAPTERS_DIR, REPO_ROOT, build_dir
from helpers.report import load_results, results_path

KERNEL = "python3"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def kernel_manager_class():
    """The kernel manager papermill starts each chapter's kernel with.

    On Linux and macOS the kernel is reached through Unix sockets (ZeroMQ's IPC transport) in a
    temporary folder of its own (readable by this user only, removed with the kernel), not
    through TCP ports on 127.0.0.1 that any local user may connect to; so ipykernel has no reason
    to print "Kernel is running over TCP without encryption". Windows has no IPC transport: TCP.
    """
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if os.name == "nt":
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            # The sockets' path prefix (ZeroMQ adds -1 ... -5). The default is relative, which
            # would put them in the chapter's folder while it runs.
            self._socket_dir = tempfile.mkdtemp(prefix="course-kernel-")
            return os.path.join(self._socket_dir, "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart and getattr(self, "_socket_dir", None):
                shutil.rmtree(self._socket_dir, ignore_errors=True)

        cleanup_resources = _async_cleanup_resources

    return IPCKernelManager


def chapters(names: list[str] | None = None) -> list[Path]:
    """Chapter notebooks by stem prefix ("01", "01_quantization") or all of them, in order."""
    every = sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    picked = [p for p in every if any(p.stem.startswith(n) for n in names)]
    if len(picked) == 0:
        raise SystemExit(f"No chapter matches {names}; chapters: {[p.stem for p in every]}")
    return picked


def check_parameters(path: Path, parameters: dict) -> None:
    """Papermill only warns on an unknown parameter (a typo keeps the default): refuse it."""
    known = {p["name"] for p in papermill.inspect_notebook(str(path)).values()}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(
            f"{path.name}: unknown parameter(s) {unknown}; "
            f"its parameters cell defines {sorted(known)}"
        )


def _relative_paths(cell) -> None:
    """Print paths inside the course relative to it: a reader's clone is elsewhere."""
    root = f"{REPO_ROOT}/"
    for out in cell.get("outputs", []):
        if "text" in out:
            out["text"] = out["text"].replace(root, "")
        if "text/plain" in out.get("data", {}):
            out["data"]["text/plain"] = out["data"]["text/plain"].replace(root, "")


def strip_metadata(nb) -> None:
    """Drop what changes on every run and teaches nothing (timings, papermill, widget state),
    and make paths inside the course relative."""
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    nb.cells = [
        c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
    ]
    for cell in nb.cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        # A widget's stored output is its first frame (a progress bar at 0 %) once its state
        # is gone: drop it. Every widget in the course has a static plot or print beside it.
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
        _relative_paths(cell)


def execute(path: Path, out: Path, parameters: dict, prepare_only: bool = False) -> None:
    check_parameters(path, parameters)
    papermill.execute_notebook(
        str(path),
        str(out),
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(path.parent),
        progress_bar=False,
        prepare_only=prepare_only,
        kernel_manager_class=kernel_manager_class(),
    )


def _headline(numbers: dict, width: int = 70) -> str:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()]
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def profile_label(profile: str) -> str:
    """The profile as the table shows it: ``tiny (auto)`` when ``auto`` chose tiny."""
    from helpers.profiles import UnsupportedHardwareError, resolve_profile

    if profile != "auto":
        return profile
    try:
        return f"{resolve_profile('auto')[0].name} (auto)"
    except UnsupportedHardwareError:
        return "auto (none fits)"


def failure_cause(err: Exception, executed: Path, lines: int = 6) -> str:
    """What went wrong inside an executed chapter: the failing cell's last printed lines and
    its exception (papermill's own message only says that a cell raised)."""
    if not isinstance(err, papermill.PapermillExecutionError):
        return f"{type(err).__name__}: {err}"
    printed = []
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        for cell in nb.cells:
            outs = cell.get("outputs", [])
            if any(o.get("output_type") == "error" for o in outs):
                text = "".join(o.get("text", "") for o in outs if o.get("output_type") == "stream")
                printed = text.strip().splitlines()[-lines:]
    cause = f"cell {err.exec_count} raised {err.ename}: {err.evalue}"
    return "\n".join([*printed, cause])


def run(profile: str, names: list[str] | None) -> int:
    """Execute chapters into build/, print the table; return the number that failed."""
    out_dir = build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    label, rows = profile_label(profile), []
    for path in chapters(names):
        start, status = time.perf_counter(), "ok"
        try:
            execute(path, out_dir / path.name, {"PROFILE": profile})
        except Exception as err:  # noqa: BLE001 - a failed chapter is reported, not fatal
            status = f"FAILED: {type(err).__name__}"
            cause = failure_cause(err, out_dir / path.name).replace("\n", "\n    ")
            print(f"{path.name} failed:\n    {cause}", file=sys.stderr)
        rows.append((path.stem, time.perf_counter() - start, status))
    results = load_results()
    width = max(len(label), 8)
    print(f"\n{'chapter':<28} {'profile':<{width}} {'wall s':>7}  {'status':<8} headline numbers")
    for stem, seconds, status in rows:
        print(
            f"{stem:<28} {label:<{width}} {seconds:7.1f}  {status:<8} "
            f"{_headline(results.get(stem, {}))}"
        )
    print(f"\nexecuted notebooks in {out_dir}/, numbers in {results_path()}")
    return sum(status != "ok" for _, _, status in rows)


def refresh(paths: list[Path]) -> None:
    """Execute chapters in place (auto profile: tiny on a CPU) and strip noisy metadata."""
    for path in paths:
        start = time.perf_counter()
        execute(path, path, {})
        nb = nbformat.read(path, as_version=4)
        strip_metadata(nb)
        nbformat.write(nb, path)
        print(f"{path}: executed in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute chapters into build/ and print the table")
    p_run.add_argument("--profile", default=os.environ.get("PROFILE") or "auto")
    p_run.add_argument("chapters", nargs="*")
    p_prep = sub.add_parser("prepare", help="copy chapters with injected parameters")
    p_prep.add_argument("out_dir", type=Path)
    p_prep.add_argument("--profile", default="tiny")
    p_ref = sub.add_parser("refresh", help="re-run chapters in place and strip metadata")
    p_ref.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        return 1 if run(args.profile, args.chapters) else 0
    if args.command == "prepare":
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for path in chapters():
            execute(path, args.out_dir / path.name, {"PROFILE": args.profile}, True)
        return 0
    refresh(args.paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
