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
