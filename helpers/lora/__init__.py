"""LoRA, low-rank adapters (chapter 02; chapter 03 reuses the naive twin for QLoRA).

Two twins with the same public names, imported explicitly:

    from helpers.lora import naive, library

``naive`` is plain torch, written to be read; ``library`` calls peft. Neither is imported here,
so importing the package costs nothing.
"""

PUBLIC_NAMES = (
    "LoRALinear",
    "add_lora",
    "mark_only_lora_trainable",
    "count_parameters",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_adapter",
    "load_adapter",
    "adapter_bytes",
)


def check_lora_args(r: object, alpha: object, dropout: object) -> None:
    """The settings both twins' ``LoRALinear`` and ``add_lora`` take: a rank of at least 1, a
    finite ``alpha`` above 0 (a NaN would make every output NaN), a dropout in [0, 1)."""
    from helpers.checks import positive_number, whole_number

    whole_number(r, "r (the LoRA rank)")
    positive_number(alpha, "alpha")
    positive_number(dropout, "dropout", allow_zero=True)
    if not dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
