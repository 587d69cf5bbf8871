"""LoRA through peft: the same public names as ``helpers.lora.naive``, one peft call each.

peft (https://huggingface.co/docs/peft) wraps the model in a ``PeftModel`` whose LoRA layers
keep the frozen layer as ``base_layer`` and one ``lora_A`` / ``lora_B`` per named adapter
(here always "default"). See ``naive.py`` for the math; this module only translates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from helpers.atomic import atomic_folder
from helpers.lora import check_lora_args


def LoRALinear(  # noqa: N802 (a factory with the naive twin's class name)
    base_layer: nn.Module,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> PeftLoraLinear:
    """peft's LoRA layer (``peft.tuners.lora.Linear``, adapter "default") around ``base_layer``.

    Same arguments as ``naive.LoRALinear``; the result holds ``lora_A["default"]`` (r, IN) and
    ``lora_B["default"]`` (OUT, r) and computes the same function. peft's layer alone keeps
    the adapter in the base layer's dtype; ``get_peft_model`` then upcasts fp16/bf16 adapters
    to fp32 (``autocast_adapter_dtype=True``). The same upcast is applied here, so a layer built
    alone keeps its adapter as a model built by ``add_lora`` does (and as the naive twin).
    """
    check_lora_args(r, alpha, dropout)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora)
    layer = PeftLoraLinear(base_layer, "default", config=config, r=r, lora_alpha=alpha)
    cast_adapter_dtype(layer, "default", autocast_adapter_dtype=True)
    return layer


def _check_peft(model: nn.Module) -> PeftModel:
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"Expected a peft PeftModel, got {type(model).__name__}: call add_lora(model, ...) "
            "or load_adapter(model, path) first."
        )
    return model


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    target_modules: Sequence[str] | str,
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> PeftModel:
    """``get_peft_model`` with a ``LoraConfig``: wraps the target layers, freezes the rest.

    Returns:
        A ``PeftModelForCausalLM`` around ``model`` (peft modifies ``model`` in place too).
    """
    if isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(
            "This model already has LoRA layers: add_lora would wrap them a second time. Add "
            "LoRA once, or call merge_and_unload(model) first to fold the adapter in."
        )
    check_lora_args(r, alpha, dropout)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=dropout,
        use_rslora=use_rslora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def mark_only_lora_trainable(model: nn.Module) -> None:
    """peft's own freezing rule (the one ``get_peft_model`` applies, with bias="none")."""
    peft_model = _check_peft(model)
    peft_model.base_model._mark_only_adapters_as_trainable(peft_model.base_model.model)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Returns: (trainable parameters, all parameters), as ``print_trainable_parameters``."""
    return _check_peft(model).get_nb_trainable_parameters()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place (``merge_adapter``)."""
    _check_peft(model).merge_adapter()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every adapter back out of its base weight (``unmerge_adapter``)."""
    _check_peft(model).unmerge_adapter()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """``merge_and_unload``: the underlying transformers model, merged, without LoRA layers."""
    return _check_peft(model).merge_and_unload()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``get_peft_model_state_dict``: keys as saved, e.g. ``base_model.model.<module>.lora_A.weight``."""
    return {k: v.detach() for k, v in get_peft_model_state_dict(_check_peft(model)).items()}


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """``set_peft_model_state_dict``, refusing keys that fit no LoRA parameter."""
    result = set_peft_model_state_dict(_check_peft(model), state_dict)
    if result.unexpected_keys:
        raise KeyError(f"Adapter does not fit this model: unexpected {result.unexpected_keys[:3]}")
    return model


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """``save_pretrained``: ``adapter_model.safetensors`` + ``adapter_config.json`` in ``path``.

    peft writes the weights, then the config: into a new folder beside ``path`` that then
    replaces it as a whole (``helpers.atomic``), so an interruption never pairs new weights
    with an old config. Other files already in ``path`` are kept.
    """
    peft_model = _check_peft(model)
    with atomic_folder(path, carry_over=_not_adapter_file) as tmp:
        peft_model.save_pretrained(str(tmp))
    return Path(path)


def _not_adapter_file(name: str) -> bool:
    """Files an adapter save replaces (peft's weights in either format, its config)."""
    return not name.startswith(("adapter_model.", "adapter_config.json"))


def load_adapter(model: nn.Module, path: str | Path) -> PeftModel:
    """``PeftModel.from_pretrained`` on a base model, trainable (``is_trainable=True``)."""
    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} has no adapter_config.json: is it a LoRA adapter folder?")
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def adapter_bytes(model: nn.Module) -> int:
    """Bytes of the adapter's tensors (what ``save_adapter`` stores, headers aside)."""
    return sum(t.numel() * t.element_size() for t in lora_state_dict(model).values())
