"""What every worker of chapter 08 needs: the job description, the model, and byte counts.

A ``Job`` is plain data (paths, sizes, tensors), so it travels to forked, spawned or
``accelerate launch``-ed processes alike, and through ``torch.save`` / ``torch.load(weights_only=
True)`` to a script. Batches are dicts of (B, T) tensors: input_ids, attention_mask, labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["Job", "build_model", "state_bytes", "rel_diff", "trainable_state", "to_device"]
__all__ += ["Tolerance", "parity_tolerance", "allocated_bytes", "storage_bytes"]


@dataclass
class Job:
    """One multi-process run: the model to build, the data, the optimizer settings.

    ``grad_window`` is the global window of micro-batches whose gradient is compared (rank r
    takes micro-batches r, r + N, r + 2N, ...); ``train_windows`` are the global windows of
    the short training run, one optimizer step each.
    """

    model_dir: str
    compute_dtype: str = "float32"
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    lr: float = 1e-3
    grad_window: list[dict[str, torch.Tensor]] = field(default_factory=list)
    train_windows: list[list[dict[str, torch.Tensor]]] = field(default_factory=list)
    timeout_s: float = 120.0

    def to_dict(self) -> dict:
        """Plain containers only, loadable with ``torch.load(weights_only=True)``."""
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        return cls(**{**data, "target_modules": tuple(data["target_modules"])})


def build_model(job: Job, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """The job's causal LM with LoRA adapters (``helpers.lora.naive``), adapters seeded by
    ``seed``: ranks that pass different seeds start with different adapters."""
    from transformers import AutoModelForCausalLM
    from transformers import logging as hf_logging

    from helpers.lora import naive as lora_naive

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a forked kernel cannot draw it (no frozen bars)
    model = AutoModelForCausalLM.from_pretrained(
        job.model_dir, dtype=getattr(torch, job.compute_dtype)
    ).to(device)
    torch.manual_seed(seed)
    lora_naive.add_lora(model, job.lora_r, job.lora_alpha, job.target_modules)
    for p in model.parameters():  # adapters in fp32 (as peft does), frozen base as loaded
        if p.requires_grad:
            p.data = p.data.float()
    return model.train()


def to_device(batches: list[dict[str, torch.Tensor]], device) -> list[dict[str, torch.Tensor]]:
    """The batches' tensors on ``device`` (NCCL ranks compute on their GPU)."""
    return [{name: t.to(device) for name, t in b.items()} for b in batches]


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds: a DTensor's local shard, or the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Bytes of parameters, gradients and optimizer state that this process holds.

    Returns:
        ``{"weights", "gradients", "optimizer"}`` in bytes (DTensors count their local shard).
    """

    def nbytes(t: torch.Tensor) -> int:
        local = _local(t)
        return local.numel() * local.element_size()

    params = list(model.parameters())
    state = optimizer.state.values() if optimizer is not None else []
    return {
        "weights": sum(nbytes(p) for p in params),
        "gradients": sum(nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(
            nbytes(v) for s in state for v in s.values() if isinstance(v, torch.Tensor)
        ),
    }


def storage_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """As ``state_bytes``, but the bytes of the storages behind the tensors (each storage once):
    what the allocator handed out, padding and shared buffers included (FSDP2 pads a shard so
    that every rank's is the same size)."""
    seen: set[int] = set()

    def held(tensors) -> int:
        total = 0
        for t in tensors:
            storage = _local(t).untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    params = list(model.parameters())
    state = optimizer.state.values() if optimizer is not None else []
    return {
        "weights": held(params),
        "gradients": held(p.grad for p in params if p.grad is not None),
        "optimizer": held(v for s in state for v in s.values() if isinstance(v, torch.Tensor)),
    }


def allocated_bytes(device) -> dict[str, int] | None:
    """What CUDA's caching allocator has handed to this process's tensors, now and at its peak
    (``torch.cuda.memory_allocated``, ``max_memory_allocated``): memory measured, where
    ``state_bytes`` only counts tensor sizes. None on a CPU, whose allocator keeps no such count.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return {
        "now": torch.cuda.memory_allocated(device),
        "peak": torch.cuda.max_memory_allocated(device),
    }


def trainable_state(model: nn.Module, grads: bool = False) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (or their gradients), full tensors, on the CPU."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.grad if grads else p
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[name] = t.detach().float().cpu().clone()
    return out


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together (both dicts have the same keys)."""
    if a.keys() != b.keys():
        raise ValueError(f"rel_diff: different tensors: {sorted(a.keys() ^ b.keys())[:4]}")
    num = sum((a[k].float().cpu() - b[k].float().cpu()).pow(2).sum() for k in b)
    den = sum(b[k].float().cpu().pow(2).sum() for k in b)
    return float((num / den).sqrt())


@dataclass(frozen=True)
class Tolerance:
    """How far a data-parallel run may differ from one process, relative (``rel_diff``).

    Attributes:
        dtype: the compute dtype it holds for.
        grads: DDP's (or FSDP2's) gradient against the one-process full batch.
        steps: the weights after the training steps against one process taking them.
        why: the measured spread it rests on.
    """

    dtype: str
    grads: float
    steps: float
    why: str


# Measured on the CI machine's CPU (2-core EPYC, torch 2.13), chapter 08's job (2 ranks,
# GRAD_ACCUM_STEPS=2, 3 AdamW steps), seeds 0, 1, 2, base weights in the dtype. float32 on the
# shipped 2-block tiny model (2026-12-06); the 16-bit rows on the previous, 4-block one and not
# re-measured since:
#   float32:  gradients 2.2e-7 to 2.5e-7, weights after 3 steps 3.7e-7 to 1.9e-6
#   float16:  gradients 4.2e-7 to 4.4e-7, weights after 3 steps 3.3e-4 to 1.4e-3
#   bfloat16: gradients 4.5e-7 to 4.6e-7, weights after 3 steps 4.9e-5 to 5.6e-4
# The 16-bit gradients match as closely as fp32 on a CPU because its fp16/bf16 matmuls add in
# fp32 and the adapters' gradients are fp32; a GPU's fp16 matmuls may round partial sums to
# 16 bits (torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction), which no CPU
# run measures, so the 16-bit gradient tolerance is twice the format's unit roundoff (2^-11,
# 2^-8). Each tolerance stays far below what the wrong normalisation costs (0.36 to 0.37).
TOLERANCES = {
    "float32": Tolerance("float32", 1e-6, 1e-5, "fp32: gradients measured within 2.5e-7 of "
                         "the full batch on the CPU, weights after 3 steps within 1.9e-6"),
    "float16": Tolerance("float16", 1e-3, 2e-2, "fp16: 2 x its unit roundoff 2^-11 for the "
                         "gradients (a GPU may add partial sums in fp16; the CPU measured 4.4e-7);"
                         " weights after 3 steps measured within 1.4e-3 on the CPU (previous "
                         "model)"),
    "bfloat16": Tolerance("bfloat16", 1e-2, 1e-2, "bf16: 2 x its unit roundoff 2^-8 for the "
                          "gradients (the CPU measured 4.6e-7); weights after 3 steps measured "
                          "within 5.6e-4 on the CPU (previous model)"),
}  # fmt: skip


def parity_tolerance(compute_dtype: str) -> Tolerance:
    """The tolerance for a run computing in ``compute_dtype`` ("float32", "float16",
    "bfloat16").

    Raises:
        ValueError: another dtype (the message lists these).
    """
    if compute_dtype not in TOLERANCES:
        raise ValueError(f"no parity tolerance for {compute_dtype!r}: one of {list(TOLERANCES)}")
    return TOLERANCES[compute_dtype]


def whole_sequence(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with labels on every real token (plain text), not only on the answer."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def task_job(profile, world_size: int, grad_accum_steps: int, steps: int, seed: int = 0) -> Job:
    """A job on the course task: global windows of ``world_size * grad_accum_steps``
    micro-batches of ``profile.micro_batch_size // world_size`` records (at least 1).

    The gradient window is "mixed": the micro-batches that rank 1 gets are labelled on the
    whole sequence (plain text, many targets), rank 0's on the answer only (few targets), so
    the two ranks hold very different numbers of target tokens, as when a shard of the data
    is continued-pretraining text.

    Returns:
        A Job (``join_batches`` makes one batch of a window for the single-process reference).
    """
    from helpers.checks import whole_number
    from helpers.data import Collator, load_task
    from helpers.models import load_tokenizer

    whole_number(world_size, "world_size")  # the micro-batch size divides by it
    whole_number(grad_accum_steps, "grad_accum_steps")
    whole_number(steps, "steps")

    tokenizer = load_tokenizer(profile)
    collate, records = Collator(tokenizer, profile.max_seq_len), load_task("train")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    size = max(1, profile.micro_batch_size // world_size)
    per_window = world_size * grad_accum_steps

    def window(index: int, mixed: bool) -> list[dict[str, torch.Tensor]]:
        first = index * per_window * size
        micro = [collate([records[i] for i in order[first + j * size : first + (j + 1) * size]])
                 for j in range(per_window)]  # fmt: skip
        return [
            whole_sequence(b) if mixed and j % world_size == 1 else b for j, b in enumerate(micro)
        ]

    return Job(
        model_dir=profile.model_id,
        compute_dtype=profile.compute_dtype,
        lora_r=profile.lora_r,
        lora_alpha=profile.lora_alpha,
        target_modules=tuple(profile.target_modules),
        seed=seed,
        lr=profile.lr,
        grad_window=window(0, mixed=True),
        train_windows=[window(1 + i, mixed=True) for i in range(steps)],
    )


def join_batches(micro_batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict:
    """The micro-batches as one batch (rows in order), right-padded to the longest row."""
    longest = max(b["input_ids"].shape[1] for b in micro_batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {
        name: torch.cat(
            [
                torch.nn.functional.pad(b[name], (0, longest - b[name].shape[1]), value=v)
                for b in micro_batches
            ]
        )  # fmt: skip
        for name, v in fill.items()
    }
