"""The planner's inputs for a course profile: its model's shape and its training run."""

from __future__ import annotations

from pathlib import Path

from helpers.memory import ModelShape, RunSpec
from helpers.memory import naive as planner


def profile_shape(profile) -> ModelShape:
    """The shape of a profile's model: a shape twin's (or any local) config, else the
    published shapes in ``helpers.memory.naive.MODELS`` (``Qwen/Qwen2.5-1.5B-Instruct`` ->
    ``Qwen2.5-1.5B``). Raises KeyError when neither is known."""
    local = Path(profile.model_id) / "config.json"
    if local.is_file():
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(local.parent), profile.name)
    name = profile.model_id.split("/")[-1].removesuffix("-Instruct")
    return planner.MODELS[name]


def training_run(profile, method: str) -> RunSpec:
    """The planner's run for a profile's training settings."""
    return RunSpec(
        method,
        profile.micro_batch_size,
        profile.max_seq_len,
        profile.compute_dtype,
        gradient_checkpointing=profile.gradient_checkpointing,
        lora_r=profile.lora_r,
        target_modules=tuple(profile.target_modules),
    )
