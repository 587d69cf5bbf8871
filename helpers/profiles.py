"""Named run profiles: which model, in which dtypes, at which sizes, for how many steps.

A profile is data. Chapters read everything from it (``profile.max_steps``, ...), so the same
notebook runs the shipped tiny model on a CPU and a real model on a T4. ``auto`` picks one from
the hardware and says why.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

import torch

from helpers.hardware import Hardware, detect
from helpers.paths import TINY_MODEL_DIR

# Each hub model's commit, pinned. Source: the snapshot folder names (huggingface_hub names a
# snapshot by its commit) and ``revision=`` pins of many unrelated public projects, which agree;
# not checked against the hub from the machine that wrote this (it has no network). To move a
# pin: read the commit on the model's hub page ("Files and versions" > history), or
# ``huggingface_hub.HfApi().model_info(repo_id).sha``, then run the GPU profiles again.
REVISIONS = {
    "Qwen/Qwen2.5-0.5B-Instruct": "7ae557604adf67be50417f59c2c2f167def9a775",
    "Qwen/Qwen2.5-1.5B-Instruct": "989aa7980e4cf806f80c7fef2b1adb7bc71aa306",
    "Qwen/Qwen2.5-7B-Instruct": "a09a35458c702b33eeacc393d103063234e8bc28",
}

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _whole(low: int):
    """A rule: a whole number (not a bool) of at least ``low``."""

    def rule(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        return None if value >= low else f"is too small: it must be at least {low}"

    return rule


def _positive_number(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    return None if math.isfinite(value) and value > 0 else "is not a finite number above 0"


def _flag(value) -> str | None:
    return None if isinstance(value, bool) else "must be a bool (True or False)"


def _text(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return None if value.strip() else "is empty"


def _revision(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string (a commit sha) or None"
    return None if value.strip() else "is empty: give a commit sha, or None"


def _dtype(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return None if value in _DTYPES else f"is not one of {_DTYPES}"


def _modules(value) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        return "must be a tuple of module names, e.g. ('q_proj', 'v_proj')"
    return None if value else "is empty: name at least one layer to adapt"


def _memory(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number of GiB"
    return None if math.isfinite(value) and value >= 0 else "is below 0"


_DTYPES = ("float32", "float16", "bfloat16")
_RULES = {
    "name": _text,
    "model_id": _text,
    "revision": _revision,
    "compute_dtype": _dtype,
    "load_in_4bit": _flag,
    "max_seq_len": _whole(2),
    "micro_batch_size": _whole(1),
    "grad_accum_steps": _whole(1),
    "max_steps": _whole(1),
    "lr": _positive_number,
    "lora_r": _whole(1),
    "lora_alpha": _positive_number,
    "target_modules": _modules,
    "eval_examples": _whole(1),
    "gradient_checkpointing": _flag,
    "min_gpu_memory_gb": _memory,
    "description": lambda value: None if isinstance(value, str) else "must be a string",
}


@dataclass(frozen=True)
class Profile:
    """One run configuration. Sizes use the course's glossary names."""

    name: str
    model_id: str
    compute_dtype: str  # "float32" | "float16" | "bfloat16"
    load_in_4bit: bool
    max_seq_len: int
    micro_batch_size: int
    grad_accum_steps: int
    max_steps: int
    lr: float
    lora_r: int
    lora_alpha: int
    target_modules: tuple[str, ...]
    eval_examples: int
    gradient_checkpointing: bool
    min_gpu_memory_gb: float
    description: str
    # The hub commit the model is loaded at (``from_pretrained(..., revision=)``): a repo's
    # main branch can change under a course; None for a local folder (the tiny model, a twin).
    revision: str | None = None

    def __post_init__(self) -> None:
        """Check every field's type and range; the error names the profile and the field."""
        if isinstance(self.target_modules, list):  # an override may pass a list
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name, rule in _RULES.items():
            problem = rule(getattr(self, name))
            if problem:
                kind = TypeError if problem.startswith("must be a") else ValueError
                raise kind(f"profile {self.name!r}: {name}={getattr(self, name)!r} {problem}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.compute_dtype)

    @property
    def is_local(self) -> bool:
        """True when the model ships with the course (no hub needed)."""
        return self.model_id == str(TINY_MODEL_DIR)

    def to_dict(self) -> dict:
        return asdict(self)


# The T4 profile; t4x2, p100 and gpu-bf16 are it with the fields that differ replaced.
_T4 = Profile(
    name="t4",
    model_id="Qwen/Qwen2.5-1.5B-Instruct",
    revision=REVISIONS["Qwen/Qwen2.5-1.5B-Instruct"],
    compute_dtype="float16",
    load_in_4bit=True,
    max_seq_len=512,
    micro_batch_size=2,
    grad_accum_steps=8,
    max_steps=100,
    lr=2e-4,
    lora_r=16,
    lora_alpha=32,
    target_modules=ALL_LINEAR,
    eval_examples=200,
    gradient_checkpointing=True,
    min_gpu_memory_gb=12.0,
    # A T4 (compute capability 7.5) has no native bf16: fp16 compute with loss scaling.
    description="1.5B model, 4-bit NF4 base, fp16 compute: a free Colab or Kaggle T4",
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="tiny",
            model_id=str(TINY_MODEL_DIR),
            compute_dtype="float32",
            load_in_4bit=False,
            max_seq_len=128,
            micro_batch_size=8,
            grad_accum_steps=1,
            # 200: the shipped 2-block model's rank sweep (data/results/lora_sweep.json) is at
            # 0.97 exact match by then for r=8, and still climbing steeply at 100 steps
            max_steps=200,
            lr=3e-3,
            lora_r=8,
            lora_alpha=16,
            target_modules=ALL_LINEAR,
            eval_examples=50,
            gradient_checkpointing=False,
            min_gpu_memory_gb=0.0,
            # fp32 because bf16 matmul is ~35x slower than fp32 on the CI CPU (DESIGN.md).
            description="the shipped 2.1M-parameter Llama, fp32 on a CPU, seconds per chapter",
        ),
        Profile(
            name="gpu-4gb",
            model_id="Qwen/Qwen2.5-0.5B-Instruct",
            revision=REVISIONS["Qwen/Qwen2.5-0.5B-Instruct"],
            compute_dtype="float16",
            load_in_4bit=True,
            max_seq_len=256,
            micro_batch_size=2,
            grad_accum_steps=8,
            max_steps=100,
            lr=2e-4,
            lora_r=16,
            lora_alpha=32,
            target_modules=ALL_LINEAR,
            eval_examples=100,
            gradient_checkpointing=True,
            min_gpu_memory_gb=3.5,
            description="0.5B model, 4-bit base, fp16, checkpointing: a 4 GB GTX 1650-class card",
        ),
        _T4,
        replace(
            _T4,
            name="t4x2",
            # per process: 2 x 4 micro-batches x 2 GPUs = 16 sequences a step, as t4's 2 x 8
            grad_accum_steps=4,
            description="t4 on Kaggle's two T4s: one process per GPU, half the accumulation each",
        ),
        Profile(
            name="t4-8b",
            model_id="Qwen/Qwen2.5-7B-Instruct",
            revision=REVISIONS["Qwen/Qwen2.5-7B-Instruct"],
            compute_dtype="float16",
            load_in_4bit=True,
            max_seq_len=512,
            micro_batch_size=1,
            grad_accum_steps=16,
            max_steps=60,
            lr=1e-4,
            lora_r=16,
            lora_alpha=32,
            target_modules=ALL_LINEAR,
            eval_examples=100,
            gradient_checkpointing=True,
            min_gpu_memory_gb=12.0,
            description="7.6B model, QLoRA with checkpointing, micro-batch 1: a T4's 15 GB",
        ),
        replace(
            _T4,
            name="p100",
            # A P100 (compute capability 6.0) has no tensor cores: its fp16 runs on CUDA cores at
            # twice its fp32 rate, 18.7 TFLOPS peak against a T4's 65 on tensor cores (NVIDIA's
            # data sheets), so expect slower steps than on a T4. LLM.int8 needs 7.5: chapters
            # test Hardware.int8_matmul and skip it. 4-bit NF4 runs (bitsandbytes' cu126 build
            # ships sm_60), and so does torch's cu126 build, which the set-up cell can install.
            description="as t4, on a Kaggle P100 (16 GB, fp16 without tensor cores, no LLM.int8)",
        ),
        replace(
            _T4,
            name="gpu-bf16",
            compute_dtype="bfloat16",
            description="as t4, in bf16, for GPUs with native bf16 (Ampere or newer, 12+ GB)",
        ),
    ]
}


class UnsupportedHardwareError(RuntimeError):
    """The machine cannot run the course's GPU profiles; the message says what to do."""


def missing_kernels_advice(hw: Hardware) -> str:
    """Why this torch build cannot use the GPU, and the fix (a P100 under a CUDA 12.8+ torch)."""
    text = (
        f"This torch build ({hw.torch_version or 'unknown version'}) has no kernels for the "
        f"{hw.gpu_name} ({hw.sm}); it ships {', '.join(hw.arch_list) or 'none'}."
    )
    if hw.capability and hw.capability >= (6, 0) and hw.fix_command:
        text += (
            " PyTorch's CUDA 12.6 build of the same version still has sm_60 kernels: set "
            "P100_FIX = True in the parameters cell and run the set-up cell (or run "
            f"`{hw.fix_command}`), then restart the runtime."
        )
    return text + " Or, on Kaggle, pick Settings > Accelerator > 'GPU T4 x2'; or PROFILE='tiny'."


def choose_profile(hw: Hardware) -> tuple[str, str]:
    """Pick a profile name for this hardware and say why.

    Profiles use one GPU (the first) however many there are.

    Raises:
        UnsupportedHardwareError: a GPU this torch build has no kernels for (e.g. a P100 under
            a CUDA 12.8+ torch); the message gives the fix.
    """
    if hw.device != "cuda":
        return "tiny", "no CUDA GPU: the shipped tiny model, in fp32 on the CPU"
    if not hw.torch_supports_gpu:
        raise UnsupportedHardwareError(missing_kernels_advice(hw))
    gb = hw.total_memory_gb
    if not hw.tensor_cores and gb >= PROFILES["p100"].min_gpu_memory_gb:
        return "p100", f"{hw.gpu_name} ({hw.sm}) has no tensor cores: fp16, {gb:.1f} GiB"
    if gb < PROFILES["t4"].min_gpu_memory_gb:
        if gb < PROFILES["gpu-4gb"].min_gpu_memory_gb:
            raise UnsupportedHardwareError(
                f"The {hw.gpu_name} has {gb:.1f} GiB; the smallest GPU profile needs "
                f"{PROFILES['gpu-4gb'].min_gpu_memory_gb} GiB. Use PROFILE='tiny'."
            )
        return "gpu-4gb", f"{hw.gpu_name} with {gb:.1f} GiB: the small-card profile"
    if hw.bf16_native:
        return "gpu-bf16", f"{hw.gpu_name} ({hw.sm}) has native bf16 and {gb:.1f} GiB"
    return "t4", f"{hw.gpu_name} ({hw.sm}) has no native bf16: fp16 compute, {gb:.1f} GiB"


def resolve_profile(name: str = "auto", hw: Hardware | None = None, **overrides):
    """Return ``(profile, reason)`` for a profile name or ``"auto"``.

    Args:
        name: a key of ``PROFILES`` or ``"auto"``.
        hw: the hardware to choose from (detected when omitted).
        **overrides: fields to replace, e.g. ``max_steps=10``; ``None`` values are ignored.
    Raises:
        ValueError: an unknown profile name or field (the message lists the valid ones).
    """
    if name == "auto":
        name, reason = choose_profile(hw or detect())
    elif name in PROFILES:
        reason = f"asked for by name: {PROFILES[name].description}"
    else:
        valid = ", ".join(["auto", *PROFILES])
        raise ValueError(f"Unknown profile {name!r}. Valid profiles: {valid}.")
    fields = set(Profile.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown profile field(s) {unknown}. Valid fields: {sorted(fields)}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    twin = os.environ.get("COURSE_MODEL_DIR", "").strip()
    if twin and name != "tiny" and "model_id" not in changes:
        # A local model in the profile's place, e.g. a shape twin (python -m helpers.shapes).
        changes["model_id"] = twin
        reason += f"; model from COURSE_MODEL_DIR={twin}"
    if "model_id" in changes and "revision" not in changes:
        # another model: the profile's commit is not its commit (None: the hub's main branch)
        changes["revision"] = REVISIONS.get(changes["model_id"])
    return replace(PROFILES[name], **changes), reason


def get_profile(name: str = "auto", **overrides) -> Profile:
    """The profile alone (see ``resolve_profile``)."""
    return resolve_profile(name, **overrides)[0]
