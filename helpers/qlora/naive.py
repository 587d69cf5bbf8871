"""QLoRA by hand: a frozen NF4 base (chapter 01) under trainable LoRA adapters (chapter 02).

QLoRA (Dettmers et al. 2023, arXiv:2305.14314, section 3) stores every linear weight of the
base model as 4-bit NormalFloat codes with one absmax per block of 64 values (the absmax
themselves 8-bit quantized: "double quantization"), dequantizes a layer's weight to the compute
dtype just for its matmul, and trains only LoRA matrices kept in a higher precision:

    Y = X dequant(W_nf4)^T + scaling * X A^T B^T          (paper, equation 5)

Public API (the same names as ``helpers.qlora.library``, which uses bitsandbytes and peft):

    Linear4bit                                   a frozen NF4 linear layer
    quantize_model(model, compute_dtype, double_quant=True) -> model
    load_4bit(model_id, compute_dtype, double_quant=True) -> model
    prepare_for_kbit_training(model, gradient_checkpointing=False) -> model
    add_lora(model, r, alpha, target_modules, dropout=0.0) -> model
    base_bytes(model) -> int                     bytes of the frozen base, as stored
    merge_and_dequantize(model) -> model         the right merge: plain float layers
    merge_into_4bit(model) -> model              the wrong merge: merged, then re-quantized

The layout is bitsandbytes' (``bitsandbytes/nn/modules.py``, ``Linear4bit`` and ``Params4bit``):
the packed codes are the layer's ``weight`` (uint8, two codes per byte, first value in the high
nibble); with double quantization ``absmax`` holds uint8 codes and ``absmax2``/``offset`` the
second level. So codes and adapters move between the twins unchanged.

Dimension names: B batch, T tokens, IN / OUT a layer's features, N = OUT * IN weight values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from helpers.checks import finite_tensor
from helpers.lora import naive as lora
from helpers.quantization import naive as quant
from helpers.quantization.measure import quantizable_linears

BLOCKSIZE = 64  # values per absmax (QLoRA section 3; bitsandbytes' default for 4-bit)
ABSMAX_BLOCKSIZE = 256  # absmax values per second-level scale (double quantization)


class _MatMul4bit(torch.autograd.Function):
    """y = x W^T + b with W rebuilt from its codes in forward AND in backward.

    Autograd would otherwise keep the dequantized W (OUT, IN) alive until backward, one full
    precision copy per layer: the memory QLoRA exists to save. bitsandbytes' ``MatMul4Bit``
    (``bitsandbytes/autograd/_functions.py``) makes the same trade: compute twice, store codes.
    The bias goes into the same ``F.linear`` call, as in bitsandbytes' ``gemm_4bit``: in fp16 or
    bf16, adding it afterwards would round the product first and the sum again (one ulp off).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Linear4bit, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype), bias)  # (..., OUT)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        # dL/dx = dL/dy W; the base is frozen, so no gradient for W (None for the layer)
        grad_x = grad_out @ ctx.layer.dequantize(grad_out.dtype)  # (..., IN)
        grad_bias = (
            # (OUT,): the bias gradient sums over every token
            grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        )
        return grad_x, None, grad_bias


class Linear4bit(nn.Linear):
    """A frozen linear layer stored as NF4 codes; it computes in ``compute_dtype``.

    A subclass of ``nn.Linear`` (as bitsandbytes' is) so that code looking for linear layers,
    such as LoRA injection, finds it. Build one with ``Linear4bit.from_linear``.
    """

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype) -> None:
        nn.Module.__init__(self)  # skip nn.Linear's float weight: ours arrives quantized
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias: nn.Parameter | None = None
        self.double_quant = False

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, compute_dtype: torch.dtype, double_quant: bool = True
    ) -> Linear4bit:
        """Quantize ``linear.weight`` (OUT, IN) to NF4 (and its absmax to 8 bits)."""
        layer = cls(linear.in_features, linear.out_features, compute_dtype)
        packed, absmax = quant.quantize_nf4(linear.weight.detach(), BLOCKSIZE)  # (N/2,), (N/64,)
        # a frozen uint8 parameter, like bitsandbytes' Params4bit: it moves with .to(device)
        layer.weight = nn.Parameter(packed, requires_grad=False)
        if double_quant:
            qabsmax, absmax2, offset = quant.double_quantize_absmax(absmax, ABSMAX_BLOCKSIZE)
            layer.register_buffer("absmax", qabsmax)  # uint8 (N/64,)
            layer.register_buffer("absmax2", absmax2)  # float32 (N/64/256,)
            layer.register_buffer("offset", offset)  # float32 ()
        else:
            layer.register_buffer("absmax", absmax)  # float32 (N/64,)
        layer.double_quant = double_quant
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as floats: code level times block absmax, shape (OUT, IN)."""
        absmax = self.absmax
        if self.double_quant:
            absmax = quant.double_dequantize_absmax(
                self.absmax, self.absmax2, self.offset, ABSMAX_BLOCKSIZE
            )
        shape = (self.out_features, self.in_features)
        return quant.dequantize_nf4(self.weight, absmax, shape, BLOCKSIZE, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (..., IN) any float dtype. Returns: (..., OUT) in x's dtype."""
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = _MatMul4bit.apply(x.to(self.compute_dtype), self, bias)  # (..., OUT)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"compute_dtype={self.compute_dtype}, double_quant={self.double_quant}"
        )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


@torch.no_grad()
def quantize_model(
    model: nn.Module, compute_dtype: torch.dtype, double_quant: bool = True
) -> nn.Module:
    """Replace every linear layer but the output head by a Linear4bit, in place.

    The head, embeddings and norms stay in float, as in a bitsandbytes load through
    transformers (they are small, and the head is sensitive to quantization).

    Returns:
        The same model.
    """
    for name, linear in quantizable_linears(model).items():  # all checked before any is replaced
        finite_tensor(linear.weight.detach(), f"{name}.weight")  # NF4 of a NaN block is NaN
    for name, linear in quantizable_linears(model).items():
        _replace(model, name, Linear4bit.from_linear(linear, compute_dtype, double_quant))
    model.is_loaded_in_4bit = True  # the flag transformers sets on a 4-bit load
    return model


def _shard_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a local model folder, in the index's order."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in names]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise ValueError(
            f"{model_dir} has no model.safetensors nor model.safetensors.index.json: the naive "
            "4-bit loader reads a local safetensors folder (use library.load_4bit for a hub id)"
        )
    return [single]


def _place(model: nn.Module, name: str, tensor: torch.Tensor, quantized: dict, args: tuple) -> None:
    """Put one checkpoint tensor into the meta model: a quantizable linear weight becomes a
    Linear4bit (codes only); anything else becomes the module's float parameter or buffer."""
    module_name, _, attr = name.rpartition(".")
    if module_name in quantized and attr == "weight":
        shell = model.get_submodule(module_name)
        linear = nn.Linear(shell.in_features, shell.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(tensor, requires_grad=False)
        layer = Linear4bit.from_linear(linear, *args)  # the float weight dies with `linear`
        layer.bias = shell.bias  # meta until its own tensor arrives
        _replace(model, module_name, layer)
    else:
        set_module_tensor_to_device(model, name, tensor.device, value=tensor)


@torch.no_grad()
def load_4bit(
    model_id: str | Path, compute_dtype: torch.dtype, double_quant: bool = True
) -> PreTrainedModel:
    """Build the model on the meta device, then quantize it tensor by tensor as it loads.

    Each tensor is read from its safetensors shard (memory-mapped: one tensor at a time in host
    RAM, never a whole shard or state dict), moved to the GPU when there is one, and, if it is
    the weight of a quantizable linear layer, turned into NF4 codes at once. So the full-precision
    model never exists, in host or GPU memory: what bitsandbytes' load through transformers
    achieves too. Needs a local folder (the course's models are downloaded or built first).

    Returns:
        The model in eval mode, on the GPU when there is one.
    """
    model_dir = Path(model_id)
    files = _shard_files(model_dir)  # checked before anything is built
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with init_empty_weights():  # parameters on "meta": shapes, no memory
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    quantized = set(quantizable_linears(model))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = set(model.state_dict())
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as shard:
            for name in shard.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name not in expected:
                    raise ValueError(f"{path}: tensor {name!r} is not a parameter of this model")
                tensor = shard.get_tensor(name).to(device, compute_dtype)
                _place(model, name, tensor, quantized, (compute_dtype, double_quant))
                del tensor
    model.tie_weights()  # a tied head points at the loaded embeddings
    missing = [n for n, t in model.state_dict().items() if t.is_meta]
    if missing:
        raise ValueError(f"{model_dir}: no tensor for {missing[:5]} ({len(missing)} in all)")
    for layer in model.modules():
        if isinstance(layer, Linear4bit) and layer.bias is not None:
            layer.bias.requires_grad_(False)  # frozen, as from_linear leaves it
    model.is_loaded_in_4bit = True
    return model.to(device).eval()  # moves the buffers built at init (rotary frequencies)


def prepare_for_kbit_training(
    model: PreTrainedModel, gradient_checkpointing: bool = False
) -> PreTrainedModel:
    """The steps of peft's ``prepare_model_for_kbit_training``, written out.

    1. Freeze every base parameter: only adapters will train.
    2. Cast every fp16/bf16 parameter that is not quantized (embeddings, norms, head, biases)
       to fp32, as peft does (``peft/utils/other.py``). Not for RMSNorm's sake: transformers'
       RMSNorm already squares and averages in fp32. The reason is precision: the parts left
       outside the 4-bit layers then compute and accumulate in fp32, which keeps training under
       fp16 stable. Cost: 2 more bytes per non-quantized parameter.
    3. Make the embeddings' output require grad: a checkpointed block recomputed with the
       reentrant implementation only back-propagates if one of its inputs requires grad.
    4. Optionally trade compute for memory with gradient checkpointing (transformers'
       implementation: recompute each decoder layer's activations in backward).
    """
    for param in model.parameters():
        param.requires_grad = False
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output.requires_grad_(True)
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    return model


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    target_modules: Sequence[str] | str,
    dropout: float = 0.0,
) -> nn.Module:
    """Chapter 02's LoRA on top of the 4-bit layers, with the adapters in fp32.

    fp32 adapters: an AdamW update is often below fp16's resolution of a weight (a 10-bit
    mantissa), so it would round away; the adapters are small, so fp32 costs little.
    """
    lora.add_lora(model, r, alpha, target_modules, dropout)
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
    return model


def base_bytes(model: nn.Module) -> int:
    """Bytes of the frozen base as stored: codes, all absmax levels, and float tensors.

    LoRA parameters are not counted; shared constant code books are not either.
    """
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if ".lora_" not in name:
            total += tensor.numel() * tensor.element_size()
    return total


def _lora_over_4bit(model: nn.Module) -> dict[str, lora.LoRALinear]:
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, lora.LoRALinear) and isinstance(m.base_layer, Linear4bit)
    }
    if not layers:
        raise ValueError("No LoRA layer over a 4-bit layer: is this a QLoRA model?")
    return layers


@torch.no_grad()
def merge_and_dequantize(model: nn.Module) -> nn.Module:
    """The right merge: W = dequant(W_nf4) + scaling * B A, kept as plain float layers.

    The adapter was trained against the dequantized base, so this is exactly the function the
    QLoRA model computed (up to float rounding). The whole model ends in the compute dtype
    (fp16 on a T4: what it will be served in; training had cast norms and embeddings to fp32).
    In place; returns the same model.
    """
    layers = _lora_over_4bit(model)
    dtype = next(iter(layers.values())).base_layer.compute_dtype
    for name, layer in layers.items():
        base = layer.base_layer
        weight = base.dequantize(torch.float32) + layer.delta_weight().float()  # (OUT, IN)
        plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        plain.weight = nn.Parameter(weight.to(base.compute_dtype), requires_grad=False)
        if base.bias is not None:
            plain.bias = nn.Parameter(base.bias.to(base.compute_dtype), requires_grad=False)
        _replace(model, name, plain)
    model.is_loaded_in_4bit = False
    return model.to(dtype)


@torch.no_grad()
def merge_into_4bit(model: nn.Module) -> nn.Module:
    """The wrong merge: W = dequant(W_nf4) + scaling * B A, then quantized to NF4 again.

    The update B A is small next to a block's absmax, so re-quantizing rounds most of it away
    and adds fresh quantization error on top. In place; returns the same model.
    """
    for name, layer in _lora_over_4bit(model).items():
        base = layer.base_layer
        device = base.weight.device
        merged = nn.Linear(base.in_features, base.out_features, base.bias is not None, device)
        merged.weight.copy_(base.dequantize(torch.float32) + layer.delta_weight().float())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        _replace(model, name, Linear4bit.from_linear(merged, base.compute_dtype, base.double_quant))
    return model
