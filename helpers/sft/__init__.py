"""Supervised fine-tuning twice: the course's loop (``naive``) and TRL's ``SFTTrainer``
(``library``), with one run configuration so that both see the same model, data, batches,
LoRA adapter, optimizer and schedule.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

from helpers.profiles import Profile

# What both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "SFTResult",
    "order_records",
    "sft_train",
)
# Where the library twin's signature must differ from the naive one's, and why.
SIGNATURES_DIFFER = {
    "sft_train": (
        "the library twin also takes **changes, passed to make_trainer (an eval_dataset, "
        "SFTConfig fields), which only TRL's trainer has"
    ),
}


@dataclass(frozen=True)
class SFTRun:
    """One LoRA fine-tuning run, in the course's glossary names.

    The optimizer is torch's AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01, its defaults)
    at a constant ``lr``; ``max_grad_norm`` clips the global gradient norm. ``mixed_precision``
    ("fp16": autocast and loss scaling, a T4; "bf16"; None: the weights' own dtype) and
    ``gradient_checkpointing`` follow the profile on a GPU.
    """

    max_steps: int
    micro_batch_size: int
    grad_accum_steps: int
    lr: float
    max_seq_len: int
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps", "max_seq_len", "r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SFTRun: {name}={value!r} must be a whole number of at least 1")
        for name in ("lr", "alpha", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SFTRun: {name}={getattr(self, name)!r} must be above 0")
        if self.mixed_precision not in (None, "fp16", "bf16"):
            raise ValueError(
                f"SFTRun: mixed_precision={self.mixed_precision!r} must be None, 'fp16' or 'bf16'"
            )

    @classmethod
    def from_profile(cls, profile: Profile, **overrides) -> SFTRun:
        """The profile's sizes and LoRA settings, with ``overrides`` (e.g. ``max_steps=10``)."""
        fields = dict(
            max_steps=profile.max_steps,
            micro_batch_size=profile.micro_batch_size,
            grad_accum_steps=profile.grad_accum_steps,
            lr=profile.lr,
            max_seq_len=profile.max_seq_len,
            r=profile.lora_r,
            alpha=profile.lora_alpha,
            target_modules=tuple(profile.target_modules),
            mixed_precision={"float16": "fp16", "bfloat16": "bf16"}.get(profile.compute_dtype),
            gradient_checkpointing=profile.gradient_checkpointing,
        )
        unknown = set(overrides) - set(fields) - {"max_grad_norm", "seed"}
        if unknown:
            raise TypeError(f"SFTRun.from_profile: unknown setting(s) {sorted(unknown)}")
        return cls(**{**fields, **overrides})


@contextlib.contextmanager
def quiet_version_skew():
    """Hide the FutureWarnings that trl 1.16 and peft 0.21 raise in transformers 5.2x by using
    its ``gradient_checkpointing`` names (renamed ``activation_checkpointing``): not ours to fix.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*gradient_checkpointing.* is deprecated", FutureWarning)
        yield
