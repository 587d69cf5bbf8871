"""Measure a training step's memory on a real model of a given shape (the planner's twin).

A randomly initialised model of the shape is built with transformers (LoRA through peft,
QLoRA's 4-bit base through bitsandbytes, then ``prepare_model_for_kbit_training`` unless
``kbit_upcast=False``), and one warm-up step creates the optimizer state. Full fine-tuning in
fp16/bf16 keeps fp32 weights and runs the step under ``torch.autocast`` (mixed precision); paged
optimizers are bitsandbytes' (on a CPU it runs them unpaged, with a warning).
Then, on the second step, each category is counted from the tensors themselves:

- weights: the bytes of every parameter and buffer, plus the NF4 quantization state
  (absmax, second-level scales, code books) of bitsandbytes' 4-bit layers;
- gradients: the bytes of every ``.grad`` after backward;
- optimizer: the bytes of every tensor in ``optimizer.state``;
- activations: the tensors autograd saves for backward during the forward pass, caught with
  ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage (parameters
  excluded, since they are counted as weights).

On a GPU, ``torch.cuda.max_memory_allocated`` over the second step is the measured peak (it
includes backward's workspace; not the CUDA context). On a CPU there is no allocator
counter: the measurement is the sum of the four categories, each counted at its own moment,
and it sees neither temporaries nor backward's workspace. Only small shapes can be built.
"""

from __future__ import annotations

import contextlib
import tempfile

import torch
from torch import nn

from helpers import bnb_cpu  # noqa: F401  (before bitsandbytes: one layout on every CPU)
from helpers.memory import GIB, MemoryBreakdown, ModelShape, RunSpec, Verdict
from helpers.memory.naive import check_card_gib


def _config(shape: ModelShape):
    """A transformers config of the shape (Qwen2 when it has q/k/v biases, else Llama)."""
    from transformers import LlamaConfig, Qwen2Config

    kind = Qwen2Config if shape.qkv_bias else LlamaConfig
    return kind(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=0,
    )


def _base_model(shape: ModelShape, run: RunSpec, device: torch.device) -> nn.Module:
    """Random weights: fp32 (full), compute dtype (LoRA), NF4 linears (QLoRA)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.float32 if run.method == "full" else getattr(torch, run.compute_dtype)
    model = AutoModelForCausalLM.from_config(_config(shape), dtype=dtype)
    if run.method != "qlora":
        return model.to(device)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=run.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    with tempfile.TemporaryDirectory() as tmp:  # transformers quantizes while loading
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, dtype=dtype, device_map={"": device}
        )


def build_model(shape: ModelShape, run: RunSpec, device: str | torch.device = "cpu"):
    """The model the run trains: the base, with fp32 LoRA adapters unless ``method='full'``."""
    device = torch.device(device)
    model = _base_model(shape, run, device)
    if run.method == "qlora" and run.kbit_upcast:
        from peft import prepare_model_for_kbit_training

        # casts embeddings, norms and head to fp32; checkpointing is set below either way
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if run.method != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=run.lora_r, lora_alpha=2 * run.lora_r, target_modules=list(run.target_modules)
        )
        model = get_peft_model(model, lora)  # adapters in fp32 (autocast_adapter_dtype)
    set_checkpointing(model, run.gradient_checkpointing)
    return model


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn transformers' activation (gradient) checkpointing on or off, non-reentrant.

    transformers 5 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``
    (non-reentrant by default); older versions only have the first names.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable() if on else model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def random_batch(shape: ModelShape, run: RunSpec, device="cpu") -> dict[str, torch.Tensor]:
    """(B, T) random tokens, all targets, with the last token of the last row padded (so
    transformers builds the padded-batch attention mask, as in real fine-tuning batches)."""
    B, T = run.micro_batch_size, run.seq_len
    ids = torch.randint(1, shape.vocab_size, (B, T), device=device)
    mask = torch.ones_like(ids)
    mask[-1, -1] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _optimizer(run: RunSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The run's optimizer. Paged ones are bitsandbytes' (on a CPU they run unpaged)."""
    if run.optimizer != "adamw" and run.optimizer != "sgd":
        import bitsandbytes as bnb

        kinds = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW}
        kinds["paged_adamw8bit"] = bnb.optim.PagedAdamW8bit
        return kinds[run.optimizer](params, lr=1e-4)
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def storage_bytes(tensors, exclude: set[int] = frozenset()) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views share one), minus ``exclude``
    (storage addresses)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            if s.data_ptr() not in exclude:
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers, and bitsandbytes' 4-bit quantization state."""
    tensors = [*model.parameters(), *model.buffers()]
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        while state is not None:  # nested: double quantization's second level
            tensors += [state.absmax, state.code, getattr(state, "offset", None)]
            state = getattr(state, "state2", None)
    return [t for t in tensors if t is not None]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (moments, 8-bit states and their absmax)."""
    return storage_bytes(t for state in optimizer.state.values() for t in state.values())


def _autocast(run: RunSpec, device: torch.device):
    """Mixed precision for full fine-tuning in 16 bits (fp32 weights, 16-bit compute); LoRA and
    QLoRA compute in the base's dtype already."""
    if run.method == "full" and run.compute_dtype != "float32":
        return torch.autocast(device.type, dtype=getattr(torch, run.compute_dtype))
    return contextlib.nullcontext()


def _step(model: nn.Module, batch: dict, run: RunSpec, saved: dict[int, int] | None = None):
    """Forward and backward. ``saved`` collects {storage address: bytes} of the tensors
    autograd keeps (addresses only: holding the tensors would keep them alive in backward).
    All of them live until backward, so no address is reused among them."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    device = batch["input_ids"].device
    hooks = contextlib.nullcontext() if saved is None else None
    hooks = hooks or torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, _autocast(run, device):
        loss = model(**batch).loss
    loss.backward()


def training_memory(
    shape: ModelShape, run: RunSpec, device: str | torch.device | None = None
) -> MemoryBreakdown:
    """Measure one training step (see the module docstring for what is counted).

    Args:
        shape: a small model shape (it is built, randomly initialised).
        run: the run to measure.
        device: defaults to CUDA when available, else the CPU.
    Returns:
        MemoryBreakdown in bytes; ``measured_peak`` set on a GPU, None on a CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(shape, run, device)
    model.train()
    optimizer = _optimizer(run, [p for p in model.parameters() if p.requires_grad])
    batch = random_batch(shape, run, device)
    _step(model, batch, run)  # warm-up: creates the optimizer state
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    weights = weight_tensors(model)
    params = {t.untyped_storage().data_ptr() for t in weights}
    saved: dict[int, int] = {}
    _step(model, batch, run, saved)
    measured = MemoryBreakdown(
        weights=storage_bytes(weights),
        gradients=storage_bytes(p.grad for p in model.parameters() if p.grad is not None),
        optimizer=optimizer_state_bytes(optimizer),
        activations=sum(n for ptr, n in saved.items() if ptr not in params),
        measured_peak=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    )
    del saved, model, optimizer
    return measured


def fits(
    shape: ModelShape, run: RunSpec, card_gib: float, device: str | torch.device | None = None
) -> Verdict:
    """Measured verdict: run the step at micro-batch 1, 2, 4, ... up to ``run``'s
    micro-batch (and one doubling past it), and compare each measured peak (on a CPU: the
    counted tensors) with the card. Only for shapes small enough to build.

    Returns:
        Verdict; ``largest_micro_batch`` is the largest power of two measured to fit.
    """
    check_card_gib(card_gib)  # a NaN crashed in int(), a negative card "did NOT fit"
    capacity, largest, peak, size = int(card_gib * GIB), 0, None, 1
    while size <= 2 * run.micro_batch_size:
        m = training_memory(shape, run.with_(micro_batch_size=size), device)
        total = m.peak
        if size == run.micro_batch_size:
            peak = total
        if total > capacity:
            break
        largest, size = size, size * 2
    if peak is None:  # stopped before reaching the run's own micro-batch
        peak = training_memory(shape, run, device).peak
    ok = peak <= capacity
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on = torch.cuda.get_device_name(where) if where.type == "cuda" else "the CPU (counted tensors)"
    message = (
        f"{shape.name}, {run.method}, micro-batch {run.micro_batch_size} x {run.seq_len}: "
        f"measured on {on}, {peak / GIB:.4f} of {card_gib:g} GiB, {'fits' if ok else 'does NOT fit'}"
    )
    return Verdict(ok, peak, capacity, largest, message)
