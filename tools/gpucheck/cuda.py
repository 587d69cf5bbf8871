"""The CUDA facts gpucheck needs: is there a GPU, what is it, how big is its CUDA context."""

from __future__ import annotations

import json
import subprocess
import sys

NO_CUDA_EXIT = 2
# Run in a fresh process: create the context, load cuBLAS with one small matmul, then report
# device-wide use (total - free) and what PyTorch's allocator holds.
_PROBE = """import json, torch
torch.cuda.init()
a = torch.ones(256, 256, device="cuda", dtype=torch.float16)
(a @ a).sum().item()
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
print(json.dumps({"used": total - free, "reserved": torch.cuda.memory_reserved()}))
"""


class NoCudaError(SystemExit):
    """No CUDA GPU: gpucheck measures GPUs only (exit status 2)."""

    def __init__(self, why: str):
        super().__init__(NO_CUDA_EXIT)
        self.why = why

    def __str__(self) -> str:
        return self.why


def require_cuda() -> tuple[str, str]:
    """``(gpu name, torch version)``; raises ``NoCudaError`` with the reason when torch is
    missing or sees no CUDA GPU."""
    try:
        import torch
    except ImportError as err:
        raise NoCudaError(f"gpucheck needs torch with CUDA: {err}") from err
    if not torch.cuda.is_available():
        raise NoCudaError(
            f"gpucheck needs a CUDA GPU: torch {torch.__version__} (CUDA build "
            f"{torch.version.cuda or 'none'}) sees none. Nothing was measured."
        )
    return torch.cuda.get_device_name(0), torch.__version__


def smi_used_bytes() -> int | None:
    """Memory in use on GPU 0 by every process (nvidia-smi), None when it cannot say."""
    cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
        return int(float(out.stdout.strip().splitlines()[0])) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def measure_context() -> float | None:
    """The CUDA context of one process in GiB: device memory in use after a fresh process
    creates its context and runs a cuBLAS matmul, less what was in use before (nvidia-smi),
    less what PyTorch's allocator holds. Run it before anything else uses the GPU; None when
    nvidia-smi is missing or the probe fails."""
    before = smi_used_bytes()
    if before is None:
        return None
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    if done.returncode:
        print(f"gpucheck: the CUDA context probe failed: {done.stderr.strip()[-300:]}")
        return None
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    return round((probe["used"] - before - probe["reserved"]) / 2**30, 3)
