"""What machine is this? Platform, device, memory, and what this torch build can run on it.

Everything the profiles and the doctor decide comes from one ``Hardware`` record, so tests can
fake any machine (a T4, a P100 whose torch build has no sm_60 kernels, an A100, a CPU) by
building the record by hand.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass, field

import torch

from helpers.constants import GIB

# PyTorch's CUDA 12.6 wheels still carry sm_60 kernels (a P100); its 12.8+ builds do not.
CU126_INDEX = "https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class Hardware:
    """A snapshot of the machine.

    Attributes:
        platform: "colab", "kaggle", "binder", "ci" or "local".
        device: "cuda" or "cpu".
        gpu_name: e.g. "Tesla T4"; "" without a GPU.
        capability: CUDA compute capability as (major, minor); None without a GPU.
        total_memory_gb / free_memory_gb: GPU memory (GiB) as NVML reports it (``detect``), or,
            on a CPU, system RAM.
        bf16_native: the GPU computes bf16 in hardware (not through emulation).
        arch_list: the GPU architectures this torch build ships kernels for ("sm_75", ...).
        cpu_count: logical CPUs.
        gpu_count: CUDA GPUs visible (Kaggle's "T4 x2" shows 2); profiles use the first.
        gpu_names: the name of each visible GPU, in device order.
        torch_version: torch's version without the local build tag, e.g. "2.11.0".
    """

    platform: str = "local"
    device: str = "cpu"
    gpu_name: str = ""
    capability: tuple[int, int] | None = None
    total_memory_gb: float = 0.0
    free_memory_gb: float = 0.0
    bf16_native: bool = False
    arch_list: tuple[str, ...] = field(default_factory=tuple)
    cpu_count: int = 1
    gpu_count: int = 0
    gpu_names: tuple[str, ...] = field(default_factory=tuple)
    torch_version: str = ""

    @property
    def sm(self) -> str:
        """The GPU's architecture name, e.g. "sm_75" for a T4; "" without a GPU."""
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else ""

    @property
    def torch_supports_gpu(self) -> bool:
        """Whether this torch build has kernels for this GPU.

        A build runs on a GPU when its arch list holds the GPU's exact sm, or a compute_XY
        entry (PTX) at or below it that the driver can compile just in time.
        """
        if not self.capability:
            return False
        if not self.arch_list or self.sm in self.arch_list:
            return True
        major, minor = self.capability
        ptx = [a for a in self.arch_list if a.startswith("compute_")]
        return any(int(a.split("_")[1]) <= major * 10 + minor for a in ptx)

    @property
    def tensor_cores(self) -> bool:
        """fp16 tensor cores arrived with Volta (7.0); a P100 (6.0) multiplies on CUDA cores."""
        return bool(self.capability) and self.capability >= (7, 0)

    @property
    def int8_matmul(self) -> bool:
        """Whether bitsandbytes' LLM.int8 (8-bit matmul) runs: it needs compute capability 7.5.

        A CPU counts as able: bitsandbytes runs LLM.int8 there (slowly). Chapters test this flag
        and skip the 8-bit path with a message where it is False.
        """
        return self.device != "cuda" or (bool(self.capability) and self.capability >= (7, 5))

    @property
    def fix_command(self) -> str:
        """The pip command that installs this torch version's cu126 build (which ships sm_60 for
        a P100); "" when the GPU needs no fix or torch's version is unknown."""
        if self.device != "cuda" or self.torch_supports_gpu or not self.torch_version:
            return ""
        return (
            f"pip install --force-reinstall --no-deps torch=={self.torch_version} "
            f"--index-url {CU126_INDEX}"
        )

    def to_dict(self) -> dict:
        extra = {"tensor_cores": self.tensor_cores, "int8_matmul": self.int8_matmul}
        extra |= {"fix_command": self.fix_command}
        return {
            **asdict(self),
            "sm": self.sm,
            "torch_supports_gpu": self.torch_supports_gpu,
            **extra,
        }


def detect_platform(environ: dict[str, str] | None = None) -> str:
    """Name the platform from environment variables each service sets."""
    env = os.environ if environ is None else environ
    if "COLAB_RELEASE_TAG" in env or "COLAB_GPU" in env:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in env or "KAGGLE_URL_BASE" in env:
        return "kaggle"
    if "BINDER_SERVICE_HOST" in env or "BINDER_REQUEST" in env:
        return "binder"
    if env.get("CI", "").lower() in ("1", "true", "yes"):
        return "ci"
    return "local"


def _cpu_memory_gb() -> tuple[float, float]:
    """Total and available system RAM in GiB (Linux /proc/meminfo; zeros elsewhere)."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
        kib = {k: int(v.split()[0]) for k, v in info.items() if v.strip().endswith("kB")}
        return kib["MemTotal"] / 1024**2, kib.get("MemAvailable", kib["MemFree"]) / 1024**2
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


NVIDIA_SMI_QUERY = "index,uuid,name,compute_cap,memory.total,memory.free"


def gpu_count() -> int:
    """CUDA GPUs visible to this process, counted without initialising CUDA.

    ``torch.cuda.device_count()`` asks NVML (the driver's management library) first, which
    creates no CUDA context and leaves ``fork`` usable; ``torch.cuda.is_available()`` asks the
    CUDA runtime (``cudaGetDeviceCount``) unless ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and after
    that a forked child cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess").
    accelerate's ``is_cuda_available`` and ``notebook_launcher`` ask the same way.
    """
    return torch.cuda.device_count()


def _visible(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows ``CUDA_VISIBLE_DEVICES`` leaves, in its order (indices or UUID prefixes; the
    first entry that matches nothing ends the list, as CUDA reads it)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return rows
    out = []
    for entry in (e.strip() for e in value.split(",")):
        match = [r for r in rows if r["index"] == entry or r["uuid"].startswith(entry or "?")]
        if len(match) != 1 or match[0] in out:
            break
        out.append(match[0])
    return out


def nvidia_smi_gpus() -> list[dict] | None:
    """Each visible GPU's name, compute capability and memory, read through ``nvidia-smi``
    (NVML) so that no CUDA context is created, as accelerate's ``get_gpu_info`` reads them.

    Returns:
        ``[{"name", "capability": (major, minor), "total_gib", "free_gib"}, ...]`` in
        ``nvidia-smi``'s order (PCI bus order; CUDA numbers identical cards the same way), or
        None when ``nvidia-smi`` is missing or cannot answer (a driver older than 510 has no
        ``compute_cap`` field).
    """
    cmd = ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:
        return None
    keys = NVIDIA_SMI_QUERY.split(",")
    rows = [dict(zip(keys, (f.strip() for f in line.split(",")), strict=False))
            for line in done.stdout.splitlines() if line.strip()]  # fmt: skip
    try:
        return [
            {
                "name": r["name"],
                "capability": tuple(int(x) for x in r["compute_cap"].split(".")),
                "total_gib": float(r["memory.total"]) * 2**20 / GIB,  # MiB
                "free_gib": float(r["memory.free"]) * 2**20 / GIB,
            }
            for r in _visible(rows)
        ]
    except (KeyError, ValueError):
        return None


def _gpus_through_a_context(count: int) -> list[dict]:
    """What ``nvidia_smi_gpus`` reads, asked of CUDA itself: creates a CUDA context in this
    process (a later ``fork`` cannot use CUDA). Only where ``nvidia-smi`` cannot answer."""
    out = []
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        out.append({"name": props.name, "capability": (props.major, props.minor),
                    "total_gib": total / GIB, "free_gib": free / GIB})  # fmt: skip
    return out


def detect() -> Hardware:
    """Read the real machine, without initialising CUDA in this process where ``nvidia-smi``
    answers (chapter 08 forks this process into one per GPU after it has run).

    GPU memory is NVML's: the card's whole memory (a T4: 15,360 MiB, of which CUDA lets
    PyTorch allocate about 15,100 MiB, ``CARD_TOTAL_GIB``) and what is free before this process
    creates its context.
    """
    common = {
        "platform": detect_platform(),
        "cpu_count": os.cpu_count() or 1,
        "torch_version": torch.__version__.split("+")[0],
    }
    count = gpu_count()
    if count == 0:
        total, free = _cpu_memory_gb()
        return Hardware(device="cpu", total_memory_gb=total, free_memory_gb=free, **common)
    gpus = nvidia_smi_gpus() or _gpus_through_a_context(count)
    gpus = gpus[:count]
    first = gpus[0]
    return Hardware(
        device="cuda",
        gpu_name=first["name"],
        capability=first["capability"],
        total_memory_gb=first["total_gib"],
        free_memory_gb=first["free_gib"],
        # native bf16 from Ampere (8.0) on, as is_bf16_supported(including_emulation=False)
        # decides; a T4 (7.5) only emulates it
        bf16_native=first["capability"] >= (8, 0),
        arch_list=tuple(torch.cuda.get_arch_list()),  # compiled-in: no CUDA call
        gpu_count=len(gpus),
        gpu_names=tuple(g["name"] for g in gpus),
        **common,
    )


def free_gpu_bytes(device: int = 0) -> int:
    """Bytes this process may still allocate on a CUDA device.

    The device's free memory (``torch.cuda.mem_get_info``), and under a per-process cap
    (``torch.cuda.set_per_process_memory_fraction``, which ``$COURSE_GPU_MEMORY_GIB`` sets) no
    more than the cap less what this process has reserved: ``mem_get_info`` knows nothing of the
    cap, so a large GPU capped as a T4 would otherwise report its whole free memory.
    """
    free, total = torch.cuda.mem_get_info(device)
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = getter(device) if getter is not None else 1.0
    if fraction < 1.0:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(device))
    return max(0, free)


# --- Card budgets: what a chapter may allocate on each GPU profile's card ---------------------
# A budget is what PyTorch can allocate on the real card (torch.cuda.get_device_properties(0)
# .total_memory, in GiB), less the CUDA context (created before PyTorch allocates anything),
# less a margin. The totals, as PyTorch and CUDA report them on the real cards:
# - T4 (t4, t4-8b, t4x2 per GPU): 14.75 GiB (TensorFlow's device log of T4s, "deviceMemorySize:
#   14.75GiB", github.com/NVIDIA/DALI/issues/1813; Colab and Kaggle report 15,095 to 15,109 MiB).
# - GTX 1650 4 GB (gpu-4gb): 3.81 GiB (PyTorch's out-of-memory message on a GTX 1650,
#   "3.81 GiB total capacity", github.com/ultralytics/yolov5/issues/285).
# - P100 16 GB and 12 GB bf16 cards: declared sizes, no reported total found yet (planned).
CARD_TOTAL_GIB: dict[str, float] = {
    "t4": 14.75, "t4-8b": 14.75, "t4x2": 14.75, "gpu-4gb": 3.81, "p100": 15.9, "gpu-bf16": 12.0,
}  # fmt: skip
CARD_SOURCES: dict[str, str] = {
    "t4": "github.com/NVIDIA/DALI/issues/1813 (T4 deviceMemorySize 14.75GiB)",
    "gpu-4gb": "github.com/ultralytics/yolov5/issues/285 (GTX 1650, 3.81 GiB total capacity)",
    "p100": "declared (16 GB card), not yet sourced",
    "gpu-bf16": "declared (12 GB and up), not yet sourced",
}
for _name in ("t4-8b", "t4x2"):
    CARD_SOURCES[_name] = CARD_SOURCES["t4"]
# The CUDA context (driver state, kernels loaded lazily, cuBLAS handles) until gpucheck measures
# it: 0.3 to 0.5 GiB on a T4 under CUDA 12 (the estimate); planned, not measured.
PLANNED_CUDA_CONTEXT_GIB = 0.5
# What else may hold memory on a real card: a display (a laptop's 4 GB card drives one), other
# processes, the driver's own growth; a choice, not a measurement.
BUDGET_MARGIN_GIB = 0.25


@dataclass(frozen=True)
class Budget:
    """One GPU profile's memory budget and where its numbers come from."""

    profile: str
    total_gib: float  # what PyTorch can allocate on the real card
    context_gib: float  # the CUDA context
    margin_gib: float
    context_source: str  # "measured on <gpu>, <date>" or "planned"

    @property
    def gib(self) -> float:
        """The budget: total less the CUDA context less the margin, rounded to 0.01 GiB."""
        return round(self.total_gib - self.context_gib - self.margin_gib, 2)


def measured_context(path=None) -> tuple[float, str] | None:
    """The CUDA context ``python -m tools.gpucheck`` measured, from ``data/gpu/measured.json``:
    ``(GiB, "measured on <gpu>, <date>")``, or None when no measurement holds one."""
    import json
    from pathlib import Path

    from helpers.paths import DATA_DIR

    path = Path(path) if path else DATA_DIR / "gpu" / "measured.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = doc.get("cuda_context_gib")
    if not isinstance(value, int | float) or not value > 0:
        return None
    return float(value), f"measured on {doc.get('gpu', '?')}, {doc.get('date', '?')}"


def card_budget(profile: str, path=None) -> Budget:
    """The budget of a GPU profile's card (``CARD_TOTAL_GIB``).

    Raises:
        KeyError: the profile has no card (``tiny``) or is unknown; the message lists them.
    """
    if profile not in CARD_TOTAL_GIB:
        raise KeyError(f"no card budget for profile {profile!r}: one of {sorted(CARD_TOTAL_GIB)}")
    context = measured_context(path) or (PLANNED_CUDA_CONTEXT_GIB, "planned")
    return Budget(profile, CARD_TOTAL_GIB[profile], context[0], BUDGET_MARGIN_GIB, context[1])
