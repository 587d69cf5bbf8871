"""Log a training run to trackio, offline, and read it back for a static plot.

Why trackio: it keeps every run in a local SQLite file (no server to start, no account, no
network). The three calls that log a run are the ones trackio shares with Weights & Biases
(trackio's documentation: "API compatible with wandb.init, wandb.log, and wandb.finish"):

    run = <module>.init(project=..., name=..., config=...)   # wandb.init takes the same keywords
    run.log({"train/loss": 0.61}, step=3)                     # wandb's Run.log(data, step=...)
    run.finish()                                              # wandb's Run.finish()

``Tracker(..., backend="wandb")`` makes exactly these calls on ``wandb`` (after
``pip install wandb`` and ``wandb login``). What is trackio's alone stays outside them:
``BACKEND_OPTIONS`` (trackio would otherwise sample the CPU and GPU and embed a dashboard in
the notebook), replacing a run of the same name in the local store, and ``history``, which reads
the local store back (a W&B run is read on its web page, or with ``wandb.Api().run(path)``).
TensorBoard also works offline but writes event files that need its own reader to plot, and its
API is not wandb's. ``trackio show`` opens a local dashboard of the same file.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from pathlib import Path
from typing import Literal

from helpers.paths import build_dir

Backend = Literal["trackio", "wandb"]
# Keyword arguments of init() that one backend has and the other has not (trackio 0.43's
# init: auto_log_cpu, auto_log_gpu and embed default to on; wandb needs none here).
BACKEND_OPTIONS: dict[str, dict] = {
    "trackio": {"auto_log_cpu": False, "auto_log_gpu": False, "embed": False},
    "wandb": {},
}


def tracking_dir() -> Path:
    """Where trackio stores runs: ``$TRACKIO_DIR``, else ``build/trackio`` of the course."""
    return Path(os.environ.get("TRACKIO_DIR") or build_dir() / "trackio")


def _import(backend: str):
    """The backend's module; trackio with its store in ``tracking_dir()`` (read at import)."""
    if backend not in BACKEND_OPTIONS:
        raise ValueError(f"Tracker: backend={backend!r} is not one of {sorted(BACKEND_OPTIONS)}")
    if backend == "trackio":
        os.environ.setdefault("TRACKIO_DIR", str(tracking_dir()))
    try:
        return importlib.import_module(backend)
    except ImportError as err:
        raise ImportError(
            f"Tracker: backend={backend!r} needs `pip install {backend}`"
            + (" and `wandb login` (an account and the network)" if backend == "wandb" else "")
        ) from err


class Tracker:
    """One tracked run: ``log`` numbers by step, ``finish`` it, read it back with ``history``.

    Args:
        project: the run's project (one SQLite file per project with trackio).
        name: the run's name (with trackio, an existing run of that name is replaced).
        config: the run's settings, stored beside its numbers.
        backend: ``"trackio"`` (local, offline) or ``"wandb"`` (the same three calls).
    """

    def __init__(
        self, project: str, name: str, config: dict | None = None, backend: Backend = "trackio"
    ):
        if not project.strip() or not name.strip():
            raise ValueError("Tracker: project and name must be non-empty strings")
        self.project, self.name, self.backend = project, name, backend
        self.module = _import(backend)
        if backend == "trackio":
            self._delete_existing()
        with contextlib.redirect_stdout(io.StringIO()):  # trackio prints dashboard hints
            self.run = self.module.init(
                project=project, name=name, config=config or {}, **BACKEND_OPTIONS[backend]
            )

    def _delete_existing(self) -> None:
        storage = self.module.sqlite_storage.SQLiteStorage
        if self.name in storage.get_runs(self.project):
            storage.delete_run(self.project, self.name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record numbers (e.g. ``{"train/loss": 0.61}``) at an optimizer step."""
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def finish(self) -> None:
        """Close the run: with trackio, everything logged is in the SQLite file after this."""
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()
        if self.backend == "trackio":  # as trackio.finish(): Run.finish leaves it the current run
            current = self.module.context_vars.current_run
            if current.get() is self.run:
                current.set(None)

    def history(self) -> dict[str, tuple[list[int], list[float]]]:
        """Each metric's ``(steps, values)``, read back from trackio's stored file.

        Raises:
            ValueError: a wandb run (read it on its W&B page or with ``wandb.Api``).
        """
        if self.backend != "trackio":
            raise ValueError(
                "Tracker.history reads trackio's local file; a W&B run is read on its web page "
                "or with wandb.Api().run(path).history()"
            )
        logs = self.module.sqlite_storage.SQLiteStorage.get_logs(self.project, self.name)
        series: dict[str, tuple[list[int], list[float]]] = {}
        for row in logs:
            for key, value in row.items():
                if key not in ("step", "timestamp") and isinstance(value, int | float):
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
        return series
