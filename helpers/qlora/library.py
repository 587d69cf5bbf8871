"""QLoRA with the libraries: bitsandbytes' 4-bit layers, transformers' ``BitsAndBytesConfig``,
peft's ``prepare_model_for_kbit_training`` and LoRA. The same public names as ``naive.py``
(see there for the math); each function here is a thin call into the library.

References: transformers' bitsandbytes guide
(https://huggingface.co/docs/transformers/quantization/bitsandbytes), peft's quantization guide
(https://huggingface.co/docs/peft/developer_guides/quantization).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from helpers import bnb_cpu  # noqa: F401  (before bitsandbytes: one layout on every CPU)
from helpers.checks import finite_tensor
from helpers.lora import library as lora
from helpers.quantization.measure import quantizable_linears

Linear4bit = bnb.nn.Linear4bit
BLOCKSIZE = 64  # bitsandbytes' default blocksize for 4-bit weights


def _keep_nf4_layout(model: nn.Module) -> nn.Module:
    """Keep bitsandbytes' NF4 layout on every CPU.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its own CPU kernel at the
    first inference call (``Linear4bit.forward``, ``_convert_weight_packed_for_cpu``): another
    layout and other rounding than the NF4 codes the course compares with its naive twin, and
    only on some CPUs. So the course turns that repacking off; results then match on any CPU.
    """
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def _to_bnb(linear: nn.Linear, compute_dtype: torch.dtype, double_quant: bool) -> Linear4bit:
    """A bitsandbytes Linear4bit holding ``linear``'s weight; quantized when moved to a device
    (``Params4bit.to`` quantizes on the first move, CPU included)."""
    layer = Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=double_quant,
        quant_type="nf4",
        device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.detach().to("cpu").clone(),
        requires_grad=False,
        blocksize=BLOCKSIZE,
        compress_statistics=double_quant,
        quant_type="nf4",
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.to(linear.weight.device)


@torch.no_grad()
def quantize_model(
    model: nn.Module, compute_dtype: torch.dtype, double_quant: bool = True
) -> nn.Module:
    """Replace every linear layer but the output head by bitsandbytes' Linear4bit, in place."""
    for name, linear in quantizable_linears(model).items():  # all checked before any is replaced
        finite_tensor(linear.weight.detach(), f"{name}.weight")  # NF4 of a NaN block is NaN
    for name, linear in quantizable_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name), child, _to_bnb(linear, compute_dtype, double_quant)
        )
    model.is_loaded_in_4bit = True
    return _keep_nf4_layout(model)


def load_4bit(
    model_id: str | Path, compute_dtype: torch.dtype, double_quant: bool = True
) -> PreTrainedModel:
    """``from_pretrained`` with QLoRA's ``BitsAndBytesConfig``: NF4, double quantization,
    compute in ``compute_dtype``. Weights are quantized as they load, so a model that only fits
    in 4 bits loads too.
    """
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    from helpers.profiles import REVISIONS  # a hub model loads at the commit its profile pins

    kwargs = {"device_map": {"": 0}} if torch.cuda.is_available() else {}
    model = AutoModelForCausalLM.from_pretrained(
        model_id,
        revision=REVISIONS.get(str(model_id)),
        dtype=compute_dtype,
        quantization_config=config,
        trust_remote_code=False,
        **kwargs,
    )
    return _keep_nf4_layout(model).eval()


def prepare_for_kbit_training(
    model: PreTrainedModel, gradient_checkpointing: bool = False
) -> PreTrainedModel:
    """peft's ``prepare_model_for_kbit_training``: freeze, cast every non-quantized fp16/bf16
    parameter (embeddings, norms, head) to fp32, input grads, optionally gradient
    checkpointing."""
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    target_modules: Sequence[str] | str,
    dropout: float = 0.0,
) -> PeftModel:
    """peft's ``get_peft_model`` (it keeps adapters in fp32 over a 4-bit base:
    ``autocast_adapter_dtype=True``, its default)."""
    return lora.add_lora(model, r, alpha, target_modules, dropout)


def base_bytes(model: nn.Module) -> int:
    """Bytes of the frozen base as stored: packed codes, float tensors, and each layer's
    quantization state (absmax, and with double quantization its second level and offset).
    Shared constant code books are not counted. LoRA parameters are not counted."""
    total = 0
    for name, param in model.named_parameters():
        if ".lora_" in name:
            continue
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
                total += state.offset.numel() * state.offset.element_size()
    return total + sum(b.numel() * b.element_size() for _, b in model.named_buffers())


@torch.no_grad()
def dequantize(model: PreTrainedModel) -> PreTrainedModel:
    """Every 4-bit layer of a transformers model -> ``nn.Linear`` in the model's dtype
    (transformers' ``dequantize``, which logs the dtype once: silenced, the course says it).

    Returns:
        The same model, now unquantized.
    """
    bnb_log = logging.getLogger("transformers.integrations.bitsandbytes")
    level = bnb_log.level
    bnb_log.setLevel(logging.ERROR)
    try:
        model.dequantize()
    finally:
        bnb_log.setLevel(level)
    model.is_loaded_in_4bit = False
    return model


def merge_and_dequantize(model: PeftModel) -> PreTrainedModel:
    """The right merge: take the adapter out, dequantize the base (transformers'
    ``dequantize``), put the adapter back, ``merge_and_unload``.

    Returns:
        A plain transformers model with float linear layers, all in the compute dtype (the
        peft wrapper is consumed). Needs a model loaded with ``load_4bit``.
    """
    model = lora._check_peft(model)
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    if not layers:
        raise ValueError("No 4-bit layer under the adapter: is this a QLoRA model?")
    dtype = layers[0].compute_dtype  # the merged model runs in it (fp16 on a T4)
    config, adapter = model.peft_config["default"], get_peft_model_state_dict(model)
    base = dequantize(model.unload())  # the 4-bit base, LoRA layers removed, in float
    merged = get_peft_model(base, config)
    set_peft_model_state_dict(merged, adapter)
    return merged.merge_and_unload().to(dtype)


@torch.no_grad()
def merge_into_4bit(model: PeftModel) -> PreTrainedModel:
    """The wrong merge: peft's ``merge_and_unload`` on a 4-bit base dequantizes each weight,
    adds the update, and quantizes the sum back to NF4 (``peft/tuners/lora/bnb.py``).

    peft warns that this "may get different generations due to rounding errors"; the warning is
    silenced here because the chapters measure by how much instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Merge lora module to 4-bit")
        return lora._check_peft(model).merge_and_unload()
