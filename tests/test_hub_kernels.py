"""The course's 4-bit path prints nothing on stderr and asks no hub for a kernel (helpers.hub_kernels).

Each case runs in a fresh interpreter, as a chapter's kernel starts: ``kernels.get_kernel`` is
replaced by a spy that writes to stderr, so a call shows up there even offline.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.paths import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent

SPY = """
import kernels
def _spy(repo_id, *args, **kwargs):
    import sys
    print(f"get_kernel({repo_id!r}) was called", file=sys.stderr)
    raise RuntimeError("the test's spy")
kernels.get_kernel = _spy
"""
FOUR_BIT_PATH = """
import torch
from helpers.models import load_model
from helpers.profiles import resolve_profile
model, tokenizer = load_model(resolve_profile("tiny")[0], load_in_4bit=True)
ids = tokenizer(["The parcel arrived."], return_tensors="pt")["input_ids"]
print(tuple(model(ids).logits.shape))
"""


def run(code: str, offline: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "hub-variables-unset"])
def test_four_bit_path_leaves_stderr_empty(offline):
    pytest.importorskip("kernels")
    done = run(SPY + "import helpers\n" + FOUR_BIT_PATH, offline)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip().endswith(", 1410)")


def test_kernels_is_importable_after_bitsandbytes():
    pytest.importorskip("kernels")
    done = run("import helpers, bitsandbytes, kernels; print(kernels.get_kernel.__name__)", True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "get_kernel"


def test_without_the_course_bitsandbytes_asks_the_hub():
    """The control: the spy does see the call when bitsandbytes is imported first, on the CPUs
    where bitsandbytes makes it (AVX512-BF16). Elsewhere there is nothing to show."""
    pytest.importorskip("kernels")
    import bitsandbytes.functional

    if not bitsandbytes.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes makes no hub call here")
    done = run(SPY + "import bitsandbytes\nimport helpers\n", True)
    assert "get_kernel('kernels-community/quantization-bitsandbytes') was called" in done.stderr
