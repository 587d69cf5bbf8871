"""Helpers for the course "Fine-tuning LLMs on a budget GPU".

Each technique lives in a subpackage with two twins that share their public names:
``naive.py`` (plain torch, written to be read) and ``library.py`` (bitsandbytes, peft,
transformers, accelerate). The core modules (``hardware``, ``profiles``, ``data``, ``models``,
``report``, ``doctor``) are what every chapter stands on.

Importing ``helpers`` sets torch's CPU thread count once for every chapter (see
``set_cpu_threads``).
"""

from __future__ import annotations

import logging
import os

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes tries to fetch an optional kernel from a hub
# and logs a warning when it cannot (always, offline); the course never uses that kernel (see
# helpers.bnb_cpu). Silenced here, before any chapter imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# On a shared 2-core machine, torch's default of one thread per core made chapter 02's training
# loop 12 to 30 times slower per step than one thread (the README has the measurements).
DEFAULT_CPU_THREADS = 1


def set_cpu_threads(environ: dict[str, str] | None = None) -> int | None:
    """Set torch's intra-op CPU threads from ``$COURSE_TORCH_THREADS`` or the course default.

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

    threads = int(text) if text else DEFAULT_CPU_THREADS
    torch.set_num_threads(threads)
    return threads


set_cpu_threads()
