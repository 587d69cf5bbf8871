"""Log a training run to trackio, offline, and read it back for a static plot.

Why trackio: it keeps every run in a local SQLite file (no server to start, no account, no
network), and its calls are wandb's (``init``, ``log``, ``finish``), so the same lines send a
run to Weights & Biases once ``import trackio as wandb`` becomes ``import wandb`` (after
``wandb login``). TensorBoard also works offline but writes event files that need its own
reader to plot, and its API is not wandb's. ``trackio show`` opens a local dashboard of the
same file when a learner wants one; the chapter draws its curves with matplotlib instead.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from helpers.paths import build_dir


def tracking_dir() -> Path:
    """Where runs are stored: ``$TRACKIO_DIR``, else ``build/trackio`` of the course."""
    return Path(os.environ.get("TRACKIO_DIR") or build_dir() / "trackio")


def _trackio():
    """Import trackio with its store in ``tracking_dir()`` (trackio reads it at import)."""
    os.environ.setdefault("TRACKIO_DIR", str(tracking_dir()))
    import trackio

    return trackio


class Tracker:
    """One tracked run: ``log`` numbers by step, ``finish`` it, read it back with ``history``.

    Args:
        project: the run's project (one SQLite file per project).
        name: the run's name (an existing run of that name is replaced).
        config: the run's settings, stored beside its numbers.
    """

    def __init__(self, project: str, name: str, config: dict | None = None):
        if not project.strip() or not name.strip():
            raise ValueError("Tracker: project and name must be non-empty strings")
        self.project, self.name, self.trackio = project, name, _trackio()
        self._delete_existing()
        with contextlib.redirect_stdout(io.StringIO()):  # trackio prints dashboard hints
            self.run = self.trackio.init(
                project=project,
                name=name,
                config=config or {},
                auto_log_cpu=False,
                auto_log_gpu=False,
                embed=False,
            )

    def _delete_existing(self) -> None:
        storage = self.trackio.sqlite_storage.SQLiteStorage
        if self.name in storage.get_runs(self.project):
            storage.delete_run(self.project, self.name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record numbers (e.g. ``{"train/loss": 0.61}``) at an optimizer step."""
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def finish(self) -> None:
        """Close the run: everything logged is in the SQLite file after this returns."""
        with contextlib.redirect_stdout(io.StringIO()):
            if self.trackio.context_vars.current_run.get() is self.run:
                self.trackio.finish()  # also clears trackio's current run (its atexit hook)
            else:
                self.run.finish()

    def history(self) -> dict[str, tuple[list[int], list[float]]]:
        """Each metric's ``(steps, values)``, read back from the stored file."""
        logs = self.trackio.sqlite_storage.SQLiteStorage.get_logs(self.project, self.name)
        series: dict[str, tuple[list[int], list[float]]] = {}
        for row in logs:
            for key, value in row.items():
                if key not in ("step", "timestamp") and isinstance(value, int | float):
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
        return series
