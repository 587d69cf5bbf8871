"""DPO, direct preference optimisation (chapter 10): learn from pairs of a better and a worse
answer to the same prompt, with no reward model.

Two twins with the same public names, imported explicitly:

    from helpers.dpo import naive, library

``naive`` computes the loss by hand in plain torch; ``library`` asks TRL's ``DPOTrainer`` for
it. ``helpers.dpo.pairs`` builds the preference pairs from the course's task. This module holds
the checks both twins share and the reference switch (``adapter_disabled``); it imports nothing
heavy until a function is called.
"""

from __future__ import annotations

# The names both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = ("DPOOutput", "DPOResult", "completion_logps", "dpo_loss", "dpo_train")

import contextlib

# The names TRL's DPOTrainer logs its batch means under (``trainer.state.log_history``); both
# twins report their means under them.
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask")


def check_adapter(model: object, own_lora: bool = False) -> None:
    """The policy must carry an adapter: its reference is the same model, adapter disabled.

    Args:
        own_lora: also take the course's own LoRA layers (``helpers.lora.naive``), as the naive
            twins do; TRL needs a peft model.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return
    if own_lora:
        from helpers.lora.naive import LoRALinear

        if hasattr(model, "modules") and any(isinstance(m, LoRALinear) for m in model.modules()):
            return
    also = " or carry the course's own LoRA layers (helpers.lora.naive)" if own_lora else ""
    raise TypeError(
        f"model must be a peft model{also}: the reference is the model with its adapter "
        f"disabled. Got a {type(model).__name__} without one: add it with add_lora"
    )


@contextlib.contextmanager
def adapter_disabled(model):
    """Run ``model`` without its adapter: what it computed before LoRA was added.

    A peft model has ``disable_adapter``. The course's own LoRA layers get ``scaling = 0`` for
    the duration: W x + 0 * B A x is exactly W x, in every dtype.

    Raises:
        ValueError: a merged LoRA layer (B A is inside W and cannot be switched off).
    """
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
        return
    from helpers.lora.naive import LoRALinear

    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if any(layer.merged for layer in layers):
        raise ValueError(
            "model: a merged LoRA layer cannot be switched off (B A is inside W): call "
            "helpers.lora.naive.unmerge_lora(model) first"
        )
    scalings = [layer.scaling for layer in layers]
    try:
        for layer in layers:
            layer.scaling = 0.0
        yield
    finally:
        for layer, scaling in zip(layers, scalings, strict=True):
            layer.scaling = scaling


@contextlib.contextmanager
def adapter_kept(model):
    """Give the trainable parameters (the adapter) back as they were, values and dtype, after
    the block: for the library twins, around building a TRL trainer.

    TRL 1.16's ``DPOTrainer`` and ``GRPOTrainer`` cast a quantized model's adapter to bf16 when
    they are built (``param.data = param.data.to(torch.bfloat16)``, after the QLoRA paper), in
    place and for good: the naive twins keep peft's fp32 adapter (as chapter 03 trains it, and a
    T4 has no native bf16), so the twins would compute with two different adapters. Measured on
    the tiny model's NF4 base on a CPU, 4 random adapters: with TRL's cast the DPO gradients
    differed by up to 3.9 %, the rewards by 2.2e-2 and GRPO's loss by 1.9e-2; with the adapter
    kept, by at most 1.1e-5, 2.4e-6 and 1.3e-7 (``tests/test_dpo.py``, ``tests/test_grpo.py``).
    """
    kept = {name: p.data.clone() for name, p in model.named_parameters() if p.requires_grad}
    try:
        yield
    finally:
        for name, param in model.named_parameters():
            if name in kept:
                param.data = kept[name]


def check_records(records: object) -> list:
    """A non-empty list of preference pairs (each pair is checked where it is tokenized)."""
    if not isinstance(records, list | tuple) or not records:
        raise ValueError(f"records must be a non-empty list of preference pairs, got {records!r}")
    return list(records)


def check_batch(model, batch: object) -> dict:
    """A DPO batch: ``BATCH_KEYS`` tensors of one (N, T) shape, N even (chosen rows, then
    rejected rows), ids in the model's vocabulary, an answer token in every row."""
    from helpers.checks import token_ids, vocab_size

    if not isinstance(batch, dict) or not set(BATCH_KEYS) <= set(batch):
        raise ValueError(f"batch must be a dict with the tensors {BATCH_KEYS}")
    shapes = {name: tuple(batch[name].shape) for name in BATCH_KEYS}
    rows = shapes["input_ids"]
    if len(set(shapes.values())) != 1 or len(rows) != 2 or rows[0] % 2:
        raise ValueError(
            f"batch: {BATCH_KEYS} must share one (N, T) shape with N even (chosen rows, then "
            f"rejected rows), got {shapes}"
        )
    token_ids(batch["input_ids"], vocab_size(model), "batch['input_ids']")
    if not bool(batch["completion_mask"][:, 1:].bool().any(dim=1).all()):
        raise ValueError("batch: a row has no answer token after its first token: nothing to score")
    return batch


def check_training(max_steps: object, micro_batch_size: object, lr: object, max_grad_norm: object):
    """The settings of a DPO training run, both twins alike."""
    from helpers.checks import positive_number, whole_number

    whole_number(max_steps, "max_steps")
    whole_number(micro_batch_size, "micro_batch_size")
    positive_number(lr, "lr")
    positive_number(max_grad_norm, "max_grad_norm")
