"""Helpers for the course "Fine-tuning LLMs on a budget GPU".

Each technique lives in a subpackage with two twins that share their public names (the
package's ``PUBLIC_NAMES``): ``naive.py`` (plain torch, written to be read) and ``library.py``
(bitsandbytes, peft, transformers, accelerate). The core modules (``hardware``, ``profiles``,
``data``, ``models``, ``report``, ``doctor``) are what every chapter stands on. This package is
all a chapter imports; the course's machinery (runner, workbook, website, memory guard, GPU
check, workshop kit) lives in ``tools/`` and is never imported from here.

Importing ``helpers`` sets torch's CPU thread count once for every chapter (see
``set_cpu_threads``).
"""

from __future__ import annotations

import os

from helpers import hub_kernels

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes asks the hub for an optional kernel that the
# course never uses (helpers.hub_kernels says why and how the first import skips it).
hub_kernels.install()

# Measured on a 2-core machine, chapter 02's training step: quiet, 1 thread 0.138 s and 2 threads
# 0.089 s; with one other training process running, 1 thread 0.138 s and 2 threads 0.248 s (and
# up to 30 times slower under heavier load). Neither fixed count is within 1.3x of the best in
# both conditions, so the default follows the cores that are idle when the course is imported.


def default_cpu_threads(cores: int | None = None, load: float | None = None) -> int:
    """One torch thread per core that is idle now, at least one.

    Args:
        cores: CPU cores (``os.cpu_count()`` when omitted).
        load: the 1-minute load average (``os.getloadavg()`` when omitted; 1 thread where
            the system cannot tell).
    Returns:
        ``cores - round(load)``, clipped to [1, cores].
    """
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): be safe on a shared CPU
            return 1
    return max(1, min(cores, cores - round(load)))


def set_cpu_threads(environ: dict[str, str] | None = None) -> int | None:
    """Set torch's intra-op CPU threads from ``$COURSE_TORCH_THREADS`` or the idle cores.

    An explicit ``$OMP_NUM_THREADS`` (and no ``$COURSE_TORCH_THREADS``) is left to torch.

    Args:
        environ: the environment to read (``os.environ`` when omitted).
    Returns:
        The thread count set, or None when torch was left alone.
    Raises:
        ValueError: ``$COURSE_TORCH_THREADS`` is not a positive integer.
    """
    env = os.environ if environ is None else environ
    text = env.get("COURSE_TORCH_THREADS", "").strip()
    if not text and env.get("OMP_NUM_THREADS"):
        return None
    if text and not (text.isdigit() and int(text) > 0):
        raise ValueError(f"COURSE_TORCH_THREADS must be a positive integer, got {text!r}")
    import torch

    threads = int(text) if text else default_cpu_threads()
    torch.set_num_threads(threads)
    return threads


set_cpu_threads()
