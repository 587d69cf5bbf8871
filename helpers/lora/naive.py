"""LoRA by hand, in plain torch: a layer, its injection into a model, merging, adapter files.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a pretrained weight W (out, in) and learns a
low-rank update: h = W x + (alpha / r) * B A x, with A (r, in) and B (out, r). Only A and B are
trained, so an adapter is r * (in + out) numbers per layer instead of in * out.

Public API (the same names as ``helpers.lora.library``, which does it all through peft):

    LoRALinear(base_layer, r, alpha, dropout=0.0, use_rslora=False)   the layer
    add_lora(model, r, alpha, target_modules, dropout=0.0, use_rslora=False) -> model
    mark_only_lora_trainable(model)            freeze everything but lora_A / lora_B
    count_parameters(model) -> (trainable, total)
    merge_lora(model) / unmerge_lora(model)    fold B A into W in place, and take it out again
    merge_and_unload(model) -> model           merged, with plain nn.Linear layers back
    lora_state_dict(model) / load_lora_state_dict(model, state_dict)   peft's key names
    save_adapter(model, path) / load_adapter(model, path)   peft's adapter file format
    adapter_bytes(model) -> int                size of the adapter's tensors

The layout follows peft 0.21 (``peft/tuners/lora/layer.py``): the frozen layer is kept as
``base_layer``, ``lora_A`` and ``lora_B`` are bias-free ``nn.Linear`` modules, dropout acts on
the input of A, and a saved adapter is ``adapter_model.safetensors`` with keys such as
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` plus
``adapter_config.json``. So weights and adapter files move between the twins unchanged.

Dimension names in shape comments: B batch, T tokens, IN / OUT the base layer's features,
r the LoRA rank.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers.atomic import atomic_folder
from helpers.lora import check_lora_args

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's file names (peft/utils/constants.py)
ADAPTER_CONFIG_NAME = "adapter_config.json"
KEY_PREFIX = "base_model.model."  # peft saves keys relative to PeftModel -> LoraModel -> model


def _adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype the LoRA matrices are kept in over a base weight of ``base_dtype``.

    peft's rule (``get_peft_model(..., autocast_adapter_dtype=True)``, its default, in
    ``peft/tuners/tuners_utils.py``): fp16 and bf16 adapters are upcast to fp32, so that small
    updates to A and B are not lost to 16-bit rounding; fp32 and fp64 stay as they are. A
    quantized base (uint8 codes) gets fp32 adapters too.
    """
    return base_dtype if base_dtype in (torch.float32, torch.float64) else torch.float32


def _check_wrappable(module: nn.Module, where: str) -> None:
    """LoRALinear wraps a linear map W x (+ b) with W (OUT, IN); say clearly what else is not."""
    kind = type(module).__name__
    if type(module).__module__.startswith("transformers") and kind == "Conv1D":
        raise TypeError(
            f"{where} is GPT-2's Conv1D, whose weight is stored transposed (IN, OUT): the naive "
            "LoRA wraps nn.Linear only. Use helpers.lora.library (peft sets fan_in_fan_out)."
        )
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"{where} is of type {kind}, not nn.Linear: the naive LoRA wraps linear layers only "
            "(peft, in helpers.lora.library, also adapts Embedding and Conv layers)."
        )


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (LoRA, section 4.1).

    Args:
        base_layer: the pretrained ``nn.Linear`` (chapter 03 passes a 4-bit subclass); its
            forward is ``x -> W x (+ b)``. A and B are kept in fp32 over an fp16/bf16 (or
            quantized) base, in W's dtype over fp32/fp64, as ``get_peft_model`` keeps them.
        r: rank of the update, >= 1.
        alpha: scale numerator; the update is multiplied by ``alpha / r``
            (or ``alpha / sqrt(r)`` with ``use_rslora``, Kalajdzievski 2023).
        dropout: dropout probability on the input of A (0 means none).
        use_rslora: rank-stabilised scaling.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        _check_wrappable(base_layer, "base_layer")
        check_lora_args(r, alpha, dropout)
        self.base_layer = base_layer
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        in_features, out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.Linear(in_features, r, bias=False)  # weight (r, IN)
        self.lora_B = nn.Linear(r, out_features, bias=False)  # weight (OUT, r)
        # A as nn.Linear's own init, B zero: the update starts at exactly 0, so the wrapped model
        # computes what the pretrained one did (paper section 4.1; peft cites the reference
        # implementation, microsoft/LoRA loralib/layers.py, for the same two lines).
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        dtype = _adapter_dtype(base_layer.weight.dtype)  # fp32 over fp16/bf16, as peft
        self.lora_A.to(base_layer.weight.device, dtype)
        self.lora_B.to(base_layer.weight.device, dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (..., IN). Returns: (..., OUT), W x + scaling * B A dropout(x)."""
        result = self.base_layer(x)
        if self.merged:  # B A already lives inside W
            return result
        out_dtype = result.dtype
        # The adapter computes in its own dtype (peft does the same cast): fp32 adapters on an
        # fp16/bf16 base, so the sum is taken in fp32 and rounded once to the base's dtype.
        x = x.to(self.lora_A.weight.dtype)
        result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result.to(out_dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix: scaling * B @ A, shape (OUT, IN)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (OUT, r) @ (r, IN)

    def _base_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        if not torch.is_floating_point(weight):
            raise TypeError(
                f"Cannot merge into a {weight.dtype} base weight (a quantized layer): "
                "dequantize it first, or keep the adapter separate."
            )
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scaling * B A, so inference costs one matmul (paper section 4.1).

        The sum is computed in the adapter's precision (fp32 on a 16-bit base) and rounded to
        W's dtype once, as peft does. Rounding the update to fp16 first and then the sum again
        (two roundings) leaves some merged weights one ulp off the correctly rounded value: 7 %
        of them for an update 8 % of W's size, 30 % for one larger than W (measured, 256 x 128).
        """
        if self.merged:  # as peft: say so, change nothing
            warnings.warn("Already merged: merge() again changes nothing.", stacklevel=2)
        else:
            weight = self._base_weight()
            delta = self.delta_weight()  # (OUT, IN) in the adapter's dtype
            wide = torch.promote_types(weight.dtype, delta.dtype)
            weight.copy_(weight.to(wide) + delta.to(wide))  # one rounding, in copy_
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scaling * B A: back to the frozen weight (up to rounding).

        As peft's ``unmerge``: the update is rounded to W's dtype, then subtracted, so
        ``unmerge`` after ``merge`` gives the same weights in both twins.
        """
        if not self.merged:  # peft's words: nothing is subtracted twice
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self._base_weight()
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def _matches(name: str, target_modules: Sequence[str] | str) -> bool:
    """peft's rule: a regex string must match the whole name; a list entry matches the last
    part(s) of the dotted name (``q_proj`` matches ``model.layers.0.self_attn.q_proj``)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the LoRA matrices (``lora_A`` / ``lora_B``)."""
    for name, param in model.named_parameters():
        param.requires_grad = ".lora_A." in name or ".lora_B." in name


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    target_modules: Sequence[str] | str,
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap each linear layer named in ``target_modules`` in a LoRALinear, in place.

    Args:
        model: e.g. a ``LlamaForCausalLM``.
        target_modules: names such as ``("q_proj", "v_proj")``, or one regex string.
        r, alpha, dropout, use_rslora: see LoRALinear.
    Returns:
        The same model, with only the LoRA parameters trainable.
    Raises:
        ValueError: nothing matches, or the model has LoRA layers already.
        TypeError: a matched module is not an ``nn.Linear`` (an Embedding, a Conv1d, GPT-2's
            Conv1D): the model is left unchanged.
    """
    check_lora_args(r, alpha, dropout)  # before any layer is wrapped
    if _lora_layers(model):
        raise ValueError(
            "This model already has LoRA layers: add_lora would wrap them a second time. Add "
            "LoRA once, or call merge_and_unload(model) first to fold the adapter in."
        )
    modules = dict(model.named_modules())
    targets = [n for n in modules if n and _matches(n, target_modules)]
    if not targets:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n]
        raise ValueError(
            f"No linear layer matches target_modules={target_modules!r}; the model's linear "
            f"layers end in: {sorted({n.rsplit('.', 1)[-1] for n in linear})}"
        )
    for name in targets:  # every match must be a linear layer: say which one is not
        _check_wrappable(modules[name], f"target module {name!r}")
    for name in targets:  # model order, as peft, so a shared seed gives the same init
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, use_rslora))
    model.lora_config = {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": target_modules
        if isinstance(target_modules, str)
        else list(target_modules),
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
    }
    mark_only_lora_trainable(model)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Returns: (trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place (see LoRALinear.merge)."""
    for layer in _lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every adapter back out of its base weight, in place."""
    for layer in _lora_layers(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace each LoRALinear by its base layer: a plain model with no LoRA left."""
    for name, layer in _lora_layers(model).items():
        if not layer.merged:  # merged already by merge_lora: nothing to add
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's saved key names.

    Returns:
        ``{"base_model.model.<module>.lora_A.weight": (r, IN), "...lora_B.weight": (OUT, r)}``.
    """
    return {
        KEY_PREFIX + name: param.detach()
        for name, param in model.named_parameters()
        if ".lora_A." in name or ".lora_B." in name
    }


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Copy adapter tensors (peft's key names) into a model that already has LoRA layers.

    Raises:
        KeyError: a key has no matching LoRA parameter, or a LoRA parameter has no key.
    """
    params = {KEY_PREFIX + n: p for n, p in model.named_parameters() if ".lora_" in n}
    unexpected, missing = set(state_dict) - set(params), set(params) - set(state_dict)
    if unexpected or missing:
        raise KeyError(
            f"Adapter does not fit this model: unexpected {sorted(unexpected)[:3]}, missing "
            f"{sorted(missing)[:3]}. Was it made for the same model and target_modules?"
        )
    with torch.no_grad():
        for key, tensor in state_dict.items():
            params[key].copy_(tensor)
    return model


def adapter_bytes(model: nn.Module) -> int:
    """Bytes of the adapter's tensors (what ``save_adapter`` stores, headers aside)."""
    return sum(t.numel() * t.element_size() for t in lora_state_dict(model).values())


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapter in peft's format: ``adapter_model.safetensors`` + ``adapter_config.json``.

    ``peft.PeftModel.from_pretrained(base_model, path)`` loads the result.

    Returns:
        The folder written.
    """
    if not hasattr(model, "lora_config"):
        raise ValueError("This model has no LoRA adapter: call add_lora(model, ...) first.")
    path = Path(path)
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        **model.lora_config,
    }
    # Weights and config change together or not at all: both are written into a new folder
    # beside ``path``, which then replaces it (helpers.atomic); other files there are kept.
    with atomic_folder(path, carry_over=_not_adapter_file) as tmp:
        save_file(tensors, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return path


def _not_adapter_file(name: str) -> bool:
    """Files an adapter save replaces (peft's weights in either format, its config)."""
    return not name.startswith(("adapter_model.", ADAPTER_CONFIG_NAME))


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Add LoRA layers to a base model as ``adapter_config.json`` says, then load the weights.

    Reads adapters written by ``save_adapter`` or by peft's ``save_pretrained``.

    Args:
        model: the base model the adapter was trained on, without LoRA layers.
        path: the adapter folder.
    Returns:
        The same model with the adapter loaded (only LoRA parameters trainable).
    """
    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG_NAME, path / ADAPTER_WEIGHTS_NAME
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: is {path} a LoRA adapter folder?")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA" or any(
        config.get(k) for k in ("use_dora", "rank_pattern", "alpha_pattern", "lora_bias")
    ):
        raise ValueError(
            f"{config_file} is not a plain LoRA adapter (peft_type LORA, no DoRA, no per-layer "
            "rank or alpha, no LoRA bias): load it with helpers.lora.library instead."
        )
    if _lora_layers(model):
        raise ValueError("The model already has LoRA layers: load into a fresh base model.")
    add_lora(
        model,
        r=config["r"],
        alpha=config["lora_alpha"],
        target_modules=config["target_modules"],
        dropout=config.get("lora_dropout", 0.0),
        use_rslora=config.get("use_rslora", False),
    )
    return load_lora_state_dict(model, load_file(weights_file))
