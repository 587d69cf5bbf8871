"""bitsandbytes is imported without reaching for a kernel on the Hugging Face hub.

Why: on a CPU with AVX512-BF16, ``import bitsandbytes`` (0.50: ``backends/cpu/ops.py``, at import
time) calls ``kernels.get_kernel("kernels-community/quantization-bitsandbytes")`` when the
``kernels`` package is importable, and transformers 5.25 requires ``kernels``. Online, that call
asks the hub whether the publisher is trusted and downloads compiled code; offline, ``kernels``
logs "Skipping publisher trust check ..." and the call fails. Either way a warning lands on
stderr in the middle of a chapter, and online the course would run code fetched at import time.
Neither package has a setting that skips the look-up (bitsandbytes issues #2064 and #2090 are
about the same call), and the course never uses that kernel: ``helpers.bnb_cpu`` keeps the
portable 4-bit layout, so results are the same on every CPU.

So the course controls the import: ``install()`` (run by ``import helpers``) makes the first
``import bitsandbytes`` run with ``kernels`` hidden. Inside that one import ``from kernels import
get_kernel`` raises ImportError, which bitsandbytes handles as "no hub kernel" and takes its
built-in CPU path; its note about the fallback goes to its own logger, kept at ERROR below.
``kernels`` is importable again as soon as bitsandbytes is imported (transformers needs it).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Iterator

HIDDEN = "kernels"
# bitsandbytes logs "Failed to load CPU gemm_4bit_forward ..." here when the hub kernel is absent.
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


@contextlib.contextmanager
def hidden(name: str = HIDDEN) -> Iterator[None]:
    """Make ``import name`` raise ImportError inside the block (``sys.modules[name] = None``)."""
    saved = sys.modules.get(name)
    sys.modules[name] = None  # type: ignore[assignment]  (None: the import system says "absent")
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


class _HiddenWhileExecuting(importlib.abc.Loader):
    """Wraps bitsandbytes' own loader: runs its package module with ``kernels`` hidden."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):  # noqa: D102
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: D102
        with hidden():
            self.loader.exec_module(module)


class _FirstImport(importlib.abc.MetaPathFinder):
    """Finds ``bitsandbytes`` once, through the other finders, and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != "bitsandbytes":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _HiddenWhileExecuting(spec.loader)
        return spec


_FINDER = _FirstImport()


def install() -> bool:
    """Arrange for the first ``import bitsandbytes`` to run with ``kernels`` hidden.

    Returns:
        False when bitsandbytes was already imported (nothing left to arrange), else True.
    """
    logging.getLogger(BNB_CPU_LOGGER).setLevel(logging.ERROR)
    if "bitsandbytes" in sys.modules:
        return False
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return True


def uninstall() -> None:
    """Stop watching for bitsandbytes' import (done by the first import itself)."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)
