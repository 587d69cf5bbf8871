"""Start N worker processes that form a torch.distributed group, and always end them.

``launch(fn, world_size, args)`` runs ``fn(rank, world_size, *args)`` in ``world_size`` processes
that share a process group (gloo on a CPU, NCCL with one GPU per process) and returns what each
rank returned. It is what ``torchrun`` does, reduced to what a notebook needs:

- the processes are forked when CUDA is not yet initialised in the caller (a forked child
  inherits the imported modules: no seconds of re-importing transformers), else spawned;
- each worker uses one CPU thread (two ranks on a 2-core machine would otherwise fight);
- a rank that raises ends the launch with a RuntimeError naming the rank, and a launch still
  running after ``timeout_s`` is killed with a TimeoutError: nothing is left hanging.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "accelerate_launch", "free_port", "default_backend"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(world_size: int) -> str:
    """NCCL when there is one GPU per process, gloo otherwise (a CPU)."""
    from helpers.hardware import gpu_count

    gpus = gpu_count()  # NVML: asks without initialising CUDA, so the ranks can still be forked
    return "nccl" if gpus and gpus >= world_size else "gloo"


def _set_env(rank: int, world_size: int, port: int) -> None:
    """The variables torchrun sets, which torch.distributed and accelerate read."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )  # fmt: skip


def _worker(rank, fn, world_size, args, port, backend, init_group, timeout_s, out_dir) -> None:
    torch.set_num_threads(1)
    _set_env(rank, world_size, port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    if init_group:  # accelerate's workers build their group themselves, from the environment
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    fn: Callable,
    world_size: int = 2,
    args: tuple = (),
    *,
    timeout_s: float = 120.0,
    backend: str | None = None,
    init_group: bool = True,
) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; return each rank's result.

    Args:
        fn: a module-level function (so that it can be spawned); it returns tensors, numbers,
            strings, or dicts and lists of them (they travel back through ``torch.save``).
        world_size: the number of processes, at least 1.
        args: extra arguments for ``fn``.
        timeout_s: the whole launch's limit, and the process group's collective timeout.
        backend: "gloo" or "nccl"; by default NCCL with a GPU per process, else gloo.
        init_group: False when ``fn`` builds the group itself (an accelerate ``Accelerator``).
    Returns:
        A list of ``world_size`` results, index = rank.
    Raises:
        RuntimeError: a rank raised or died (its traceback is in the message).
        TimeoutError: the launch ran past ``timeout_s``; every process was killed.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    backend = backend or default_backend(world_size)
    # is_initialized() reads a flag; is_available() would ask the CUDA runtime and so forbid
    # the fork it is deciding on
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    with tempfile.TemporaryDirectory(prefix="course-ranks-") as out_dir:
        worker_args = (fn, world_size, args, free_port(), backend, init_group, timeout_s, out_dir)
        context = mp.start_processes(
            _worker, worker_args, nprocs=world_size, join=False, start_method=method
        )
        _join(context, timeout_s)
        return [
            torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)
        ]


def _join(context, timeout_s: float) -> None:
    """Wait for every process; kill them all on a failure or at the deadline."""
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(
            timeout=min(1.0, max(0.0, deadline - time.monotonic())), grace_period=5
        ):
            if time.monotonic() >= deadline:
                alive = [r for r, p in enumerate(context.processes) if p.is_alive()]
                raise TimeoutError(
                    f"launch: ranks {alive} still running after {timeout_s:g} s; all were killed. "
                    "A rank waiting in a collective its peer never reached hangs like this."
                )
    except mp.ProcessRaisedException as err:
        raise RuntimeError(f"launch: rank {err.error_index} failed:\n{err}") from None
    except mp.ProcessExitedException as err:
        raise RuntimeError(
            f"launch: rank {err.error_index} died with exit code {err.exit_code}"
        ) from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def accelerate_launch(
    script: str, script_args: list[str], launch_args: list[str], timeout_s: float = 180.0
) -> str:
    """Run ``accelerate launch LAUNCH_ARGS SCRIPT SCRIPT_ARGS`` and return its output.

    The launcher and every process it starts run in their own process group, killed as a
    whole at ``timeout_s``.

    Raises:
        RuntimeError: the launch failed (its output is in the message).
        TimeoutError: it ran past ``timeout_s``.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, script]
    command += script_args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise TimeoutError(f"accelerate launch ran past {timeout_s:g} s and was killed") from None
    if process.returncode != 0:
        raise RuntimeError(f"accelerate launch exited with {process.returncode}:\n{output[-3000:]}")
    return output
