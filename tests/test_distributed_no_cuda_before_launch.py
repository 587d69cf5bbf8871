"""Chapter 08 on a faked two-T4 machine: nothing the kernel runs before the launch may touch CUDA.

``notebook_launcher`` and ``launch`` fork the kernel; a child of a kernel that created a CUDA
context, or only asked the CUDA runtime how many GPUs there are (``torch.cuda.is_available()``
without ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` calls ``cudaGetDeviceCount``, which poisons fork),
fails with "Cannot re-initialize CUDA in forked subprocess". A fresh Python (a new kernel) fakes
the machine: ``torch.cuda.device_count()`` answers 2, as NVML does; an ``nvidia-smi`` on PATH
answers two Tesla T4s; every function that initialises CUDA or asks the runtime raises and is
recorded. Then the chapter's code cells run, from the parameters to the cell before the first
launch, and the record must be empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "08_two_gpus.ipynb"

FAKE_SMI = """#!/bin/sh
# Two Kaggle T4s as nvidia-smi --query-gpu=index,uuid,name,compute_cap,memory.total,memory.free
# --format=csv,noheader,nounits prints them.
echo "0, GPU-0a1b2c3d-0000-0000-0000-000000000000, Tesla T4, 7.5, 15360, 15090"
echo "1, GPU-0a1b2c3d-1111-1111-1111-111111111111, Tesla T4, 7.5, 15360, 15090"
"""

DRIVER = r"""
import json, os, sys
import nbformat
import torch

calls = []


def forbidden(name):
    def call(*args, **kwargs):
        calls.append(name)
        raise RuntimeError(f"torch.cuda.{name} ran before the launch: it initialises CUDA")
    return call


for name in ("init", "_lazy_init", "get_device_properties", "mem_get_info", "current_device",
             "set_device", "get_device_name", "get_device_capability", "is_bf16_supported",
             "synchronize", "memory_allocated", "max_memory_allocated", "memory_reserved",
             "set_per_process_memory_fraction", "empty_cache", "reset_peak_memory_stats"):
    setattr(torch.cuda, name, forbidden(name))
# NVML's device count leaves fork usable; the runtime's (a plain is_available()) does not.
# (torch._C is left as this CPU build has it: code that calls the runtime directly fails too.)
torch.cuda.device_count = lambda: 2
torch.cuda.get_arch_list = lambda: "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90".split()


def is_available():
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1":
        return torch.cuda.device_count() > 0
    return forbidden("is_available (cudaGetDeviceCount, without the NVML check)")()


torch.cuda.is_available = is_available

nb = nbformat.read(sys.argv[1], as_version=4)
cells = [c for c in nb.cells if c.cell_type == "code"]
stop = next(i for i, c in enumerate(cells) if "launch(" in c.source and "import" not in
            c.source.split("launch(")[0].splitlines()[-1])
namespace = {"__name__": "__main__"}
error = None
try:
    for cell in cells[:stop]:
        exec(compile(cell.source, "<cell>", "exec"), namespace)
    # the first launch itself, up to the fork: it must fork (no CUDA yet) one NCCL rank per GPU
    import torch.multiprocessing as mp

    class Forked(Exception):
        pass

    def start_processes(fn, args, nprocs, join, start_method):
        namespace["forked"] = {"method": start_method, "nprocs": nprocs, "backend": args[4]}
        raise Forked

    mp.start_processes = start_processes
    try:
        exec(compile(cells[stop].source, "<cell>", "exec"), namespace)
    except Forked:
        pass
    # notebook_launcher forks after the first launch: its cell's imports and checks too
    before = next(c.source for c in cells if "notebook_launcher(" in c.source).split("t0 =")[0]
    exec(compile(before, "<cell>", "exec"), namespace)
except BaseException as err:  # noqa: BLE001 - reported to the test
    error = f"{type(err).__name__}: {err}"
print("RESULT " + json.dumps({
    "calls": calls,
    "error": error,
    "cells_run": stop,
    "cuda_initialized": torch.cuda.is_initialized(),
    "bitsandbytes_imported": "bitsandbytes" in sys.modules,
    "profile": getattr(namespace.get("profile"), "name", None),
    "gpus": namespace.get("gpus"),
    "forked": namespace.get("forked"),
}))
"""


def test_no_cuda_before_the_launch_on_two_faked_t4s(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        COURSE_RESULTS=str(tmp_path / "results.json"),
        # the profile's model in place of Qwen (no hub here): the tiny model's files
        COURSE_MODEL_DIR=str(ROOT / "data" / "tiny-llama"),
    )
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(CHAPTER)],
        cwd=ROOT / "chapters", env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["calls"] == [], result
    assert result["error"] is None, result
    assert result["cells_run"] >= 5  # parameters, set-up, imports, the naive twin, the job
    assert not result["cuda_initialized"] and not result["bitsandbytes_imported"]
    assert result["profile"] == "t4" and result["gpus"] == 2  # auto read the two faked T4s
    assert result["forked"] == {"method": "fork", "nprocs": 2, "backend": "nccl"}


def test_detect_reads_the_visible_gpus_from_nvidia_smi(tmp_path, monkeypatch):
    """Names, capability and memory come from nvidia-smi, in CUDA_VISIBLE_DEVICES' order."""
    import torch

    from helpers import hardware

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\necho "0, GPU-aaaa, NVIDIA A100-SXM4-40GB, 8.0, 40960, 40000"\n'
        'echo "1, GPU-bbbb, Tesla T4, 7.5, 15360, 15090"\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for name in ("get_device_properties", "mem_get_info", "is_bf16_supported", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    hw = hardware.detect()
    assert (hw.gpu_count, hw.gpu_names) == (2, ("NVIDIA A100-SXM4-40GB", "Tesla T4"))
    assert hw.capability == (8, 0) and hw.bf16_native and round(hw.total_memory_gb) == 40
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bb")  # a UUID prefix, as CUDA accepts
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hw = hardware.detect()
    assert (hw.gpu_name, hw.capability, hw.bf16_native, hw.gpu_count) == (
        "Tesla T4",
        (7, 5),
        False,
        1,
    )
    assert abs(hw.total_memory_gb - 15.0) < 1e-9 and abs(hw.free_memory_gb - 15090 / 1024) < 1e-9
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert hardware.nvidia_smi_gpus()[0]["name"] == "Tesla T4"
