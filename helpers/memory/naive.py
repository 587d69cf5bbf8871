"""The memory planner: a training run's peak memory from first principles, no model needed.

Every number is bytes = count x bytes per element, by category (the layout ZeRO's paper,
Rajbhandari et al. 2020, section 3, uses for "model states" and "residual states"):

- weights: every parameter in its storage dtype. Full fine-tuning keeps fp32 weights (mixed
  precision casts per operation); LoRA keeps the frozen base in the compute dtype and the
  adapters in fp32 (peft's ``autocast_adapter_dtype``); QLoRA stores the decoder's linear
  weights as NF4: 4 bits, plus one fp32 absmax per block of 64, or with double quantization an
  8-bit absmax and one fp32 scale per 256 of them (QLoRA, Dettmers et al. 2023, section 3).
- gradients: one fp32 value per trainable parameter.
- optimizer: AdamW keeps two fp32 moments (8 bytes per trainable value) and a step counter per
  tensor; bitsandbytes' 8-bit AdamW keeps two uint8 moments plus an fp32 absmax per block of
  256 (Dettmers et al. 2022, "8-bit optimizers via block-wise quantization"), but tensors under
  4096 values keep fp32 moments (its ``min_8bit_size``); SGD without momentum keeps nothing.
- activations: the tensors autograd saves for backward (formula in ``activation_bytes``).
- transient: backward's workspace on top: the logits' fp32 gradient, and with checkpointing
  one decoder layer recomputed.
- overhead: on a GPU, an allowance for the CUDA context, which no tensor counter sees.

Shapes: B micro_batch_size, T seq_len, h hidden_size, i intermediate_size, a = heads x
head_dim, kv = kv heads x head_dim, V vocab_size, L layers, r LoRA rank.
"""

from __future__ import annotations

import math

from helpers.memory import DTYPE_BYTES, GIB, MemoryBreakdown, ModelShape, RunSpec, Verdict

__all__ = ["training_memory", "fits", "MODELS", "CARDS", "PUBLISHED", "CUDA_CONTEXT_BYTES"]

# A stated allowance, not a measurement: the CUDA context and the kernels torch loads take a
# few hundred MiB of GPU memory outside any tensor (PyTorch "CUDA semantics" notes, memory
# management); 0.5 GiB is a round upper value for recent torch builds.
CUDA_CONTEXT_BYTES = GIB // 2
NF4_BLOCKSIZE, DQ_BLOCKSIZE = 64, 256  # QLoRA section 3: blocks of 64, second level of 256
ADAM8_BLOCKSIZE, ADAM8_MIN_SIZE = 256, 4096  # bitsandbytes' blockwise 8-bit states

_QWEN25 = "Qwen2.5 model card and config.json on the Hugging Face hub (Qwen/{}), and Table 1"
_QWEN25 += " of the Qwen2.5 technical report (arXiv:2412.15115)"
MODELS: dict[str, ModelShape] = {
    # hidden, intermediate, layers, heads, kv heads: Qwen/Qwen2.5-0.5B config.json
    "Qwen2.5-0.5B": ModelShape(
        "Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 64, 151936, True, True, _QWEN25.format("0.5B")
    ),
    # Qwen/Qwen2.5-1.5B config.json
    "Qwen2.5-1.5B": ModelShape(
        "Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 128, 151936, True, True, _QWEN25.format("1.5B")
    ),
    # Qwen/Qwen2.5-3B config.json
    "Qwen2.5-3B": ModelShape(
        "Qwen2.5-3B", 2048, 11008, 36, 16, 2, 128, 151936, True, True, _QWEN25.format("3B")
    ),
    # meta-llama/Llama-3.1-8B config.json; Llama 3 paper (arXiv:2407.21783), Table 3
    "Llama-3.1-8B": ModelShape(
        "Llama-3.1-8B",
        4096,
        14336,
        32,
        32,
        8,
        128,
        128256,
        False,
        False,
        "meta-llama/Llama-3.1-8B config.json; The Llama 3 Herd of Models, Table 3",
    ),  # fmt: skip
}
# Memory a card offers, in GiB. A T4 has 16 GB, of which Colab and Kaggle show about 15 GiB.
CARDS: dict[str, float] = {"4 GB (GTX 1650)": 4.0, "T4 16 GB": 15.0, "24 GB (RTX 3090/4090)": 24.0}
# Published figures, quoted with their sources; not measured by this course.
PUBLISHED: list[dict] = [
    {
        "what": "QLoRA, 65B model (LLaMA), 4-bit base + LoRA",
        "published": "< 48 GB, one 48 GB GPU (full 16-bit fine-tuning: > 780 GB)",
        "source": "Dettmers et al. 2023, QLoRA (arXiv:2305.14314), abstract and section 1",
    },
    {
        "what": "bigscience/T0_3B, full fine-tuning vs LoRA (A100 80GB)",
        "published": "47.14 GB vs 14.4 GB of GPU memory",
        "source": "huggingface/peft README, 'High performance on consumer hardware' table",
    },
    {
        "what": "bigscience/bloomz-7b1, full fine-tuning vs LoRA (A100 80GB)",
        "published": "out of memory vs 32 GB of GPU memory",
        "source": "huggingface/peft README, same table",
    },
]


def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer of one decoder layer, by its transformers name."""
    h, a = shape.hidden_size, shape.num_heads * shape.head_dim
    kv, i = shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    return {
        "q_proj": (a, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, a),
        "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i),
    }  # fmt: skip


def parameter_counts(shape: ModelShape) -> dict[str, int]:
    """Parameters by kind: the decoder's linear weights, and everything else."""
    h, L = shape.hidden_size, shape.num_layers
    linear = L * sum(o * i for o, i in linear_shapes(shape).values())
    bias = L * sum(linear_shapes(shape)[n][0] for n in ("q_proj", "k_proj", "v_proj"))
    embeddings = shape.vocab_size * h * (1 if shape.tie_embeddings else 2)  # + lm_head
    norms = (2 * L + 1) * h  # two RMSNorms per layer and the final one
    return {"linear": linear, "other": embeddings + norms + bias * shape.qkv_bias}


def parameter_sizes(shape: ModelShape) -> list[int]:
    """The number of values in each parameter tensor of the model."""
    h, layers = shape.hidden_size, linear_shapes(shape)
    per_layer = [o * i for o, i in layers.values()] + [h, h]  # linears, two RMSNorms
    if shape.qkv_bias:
        per_layer += [layers[n][0] for n in ("q_proj", "k_proj", "v_proj")]
    heads = [shape.vocab_size * h] * (1 if shape.tie_embeddings else 2)  # embeddings, lm_head
    return per_layer * shape.num_layers + heads + [h]  # + the final norm


def trainable_sizes(shape: ModelShape, run: RunSpec) -> list[int]:
    """The number of values in each trainable tensor (LoRA: A (r, in) and B (out, r))."""
    layers = linear_shapes(shape)
    unknown = sorted(set(run.target_modules) - set(layers))
    if unknown:
        raise ValueError(f"unknown target_modules {unknown}; a Llama layer has {sorted(layers)}")
    if run.method == "full":
        return parameter_sizes(shape)
    sizes = []
    for name in run.target_modules:
        out_f, in_f = layers[name]
        sizes += [run.lora_r * in_f, out_f * run.lora_r]
    return sizes * shape.num_layers


def weight_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Bytes of all weights: fp32 (full), compute dtype (LoRA base), NF4 (QLoRA linears)."""
    counts, adapters = parameter_counts(shape), 0
    if run.method != "full":
        adapters = 4 * sum(trainable_sizes(shape, run))  # fp32 adapters
    if run.method == "full":
        return 4 * (counts["linear"] + counts["other"])
    base = DTYPE_BYTES[run.compute_dtype]
    if run.method == "lora":
        return base * (counts["linear"] + counts["other"]) + adapters
    n_layers = shape.num_layers * len(linear_shapes(shape))
    nf4 = sum(_nf4_bytes(o * i, run.double_quant) for o, i in linear_shapes(shape).values())
    return (
        shape.num_layers * nf4
        + base * counts["other"]
        + adapters
        + n_layers
        * (
            4 * 16 + (4 * 256 + 4 if run.double_quant else 0)  # each layer's code books, offset
        )
    )


def _nf4_bytes(n: int, double_quant: bool) -> int:
    """One weight of n values in NF4: two codes per byte, and its absmax per block of 64
    (fp32, or 8-bit with an fp32 scale per 256 absmax under double quantization)."""
    blocks = math.ceil(n / NF4_BLOCKSIZE)
    absmax = blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) if double_quant else 4 * blocks
    return math.ceil(n / 2) + absmax


def optimizer_bytes(sizes: list[int], optimizer: str) -> int:
    """Optimizer state for trainable tensors of the given sizes (see the module docstring)."""
    if optimizer == "sgd":
        return 0
    total = 0
    for n in sizes:
        if optimizer == "adamw8bit" and n >= ADAM8_MIN_SIZE:
            total += 2 * n + 2 * 4 * math.ceil(n / ADAM8_BLOCKSIZE)  # 2 x (uint8 + absmax)
        else:
            total += 2 * 4 * n  # exp_avg and exp_avg_sq in fp32
        total += 4  # the step counter
    return total


def activation_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Bytes autograd saves for backward during one micro-batch's forward pass.

    Per token and decoder layer (Llama in transformers, sdpa attention; checked against the
    saved tensors of the course's tiny model, see chapter 04):
      - 6h full fine-tuning (RMSNorm inputs and outputs, the inputs of the linears whose
        weights need gradients), 4h with LoRA (frozen norm weights save less);
      - 4a for attention: q, and k, v repeated to every head (grouped-query attention), and
        the output; plus per head the fp32 log-sum-exp. With a single kv head the repeat is
        a view (no copy), and k, v count kv values each;
      - 4i for the MLP: gate, silu(gate), up, and their product (the input of down_proj);
      - LoRA: r values per adapted layer (the output of A, the input of B);
      - T values of the 4-D attention mask transformers builds for padded batches.
    Plus, per token: the fp32 logits (V) that cross-entropy keeps, and the final norm.
    With checkpointing only each layer's input (h) is kept; the rest is recomputed.
    """
    h, a, i = shape.hidden_size, shape.num_heads * shape.head_dim, shape.intermediate_size
    b, tokens = DTYPE_BYTES[run.compute_dtype], run.micro_batch_size * run.seq_len
    full = run.method == "full"
    head = 4 * shape.vocab_size + b * (3 * h if full else h)
    if run.gradient_checkpointing:
        return tokens * (shape.num_layers * b * h + head)
    kv = shape.num_kv_heads * shape.head_dim if shape.num_kv_heads == 1 else a
    per_layer = b * ((6 if full else 4) * h + 2 * a + 2 * kv + 4 * i + run.seq_len)
    per_layer += 4 * (2 + shape.num_heads)  # fp32 RMSNorm 1/rms (two), log-sum-exp per head
    if not full:
        per_layer += 4 * run.lora_r * len(run.target_modules)  # fp32 adapters: r per layer
    return tokens * (shape.num_layers * per_layer + head)


def transient_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Backward's extra: the fp32 logits' gradient, and a recomputed layer if checkpointing."""
    tokens = run.micro_batch_size * run.seq_len
    extra = 4 * tokens * shape.vocab_size
    if run.gradient_checkpointing:  # one layer's saved tensors exist again while it backprops
        one_layer = activation_bytes(shape, run.with_(gradient_checkpointing=False))
        extra += (one_layer - tokens * (4 * shape.vocab_size)) // shape.num_layers
    return extra


def training_memory(shape: ModelShape, run: RunSpec, device: str = "cuda") -> MemoryBreakdown:
    """Plan one training step's memory.

    Args:
        shape: the model's sizes (``MODELS[...]`` or ``ModelShape.from_config``).
        run: method, micro-batch, sequence length, dtypes, optimizer, checkpointing.
        device: "cuda" adds the CUDA context allowance; "cpu" does not.
    Returns:
        A MemoryBreakdown in bytes; ``.peak`` is the planned peak.
    """
    sizes = trainable_sizes(shape, run)
    return MemoryBreakdown(
        weights=weight_bytes(shape, run),
        gradients=4 * sum(sizes),
        optimizer=optimizer_bytes(sizes, run.optimizer),
        activations=activation_bytes(shape, run),
        transient=transient_bytes(shape, run),
        overhead=CUDA_CONTEXT_BYTES if device == "cuda" else 0,
    )


def fits(shape: ModelShape, run: RunSpec, card_gib: float, device: str = "cuda") -> Verdict:
    """Does this run fit a card, and what is the largest micro-batch that does?

    Uses the planner (``training_memory``): peak = weights + gradients + optimizer state +
    saved activations + backward workspace + CUDA context allowance. Activations grow
    linearly with the micro-batch, so the largest one that fits is solved for directly.
    Checked against measurement on CPU tensor counts (within about 1%); on a GPU (H100,
    small shapes) the planned peak was 25-65% below ``max_memory_allocated`` (workspace,
    autocast copies and allocator rounding are not modelled), so leave headroom.

    Args:
        shape: model sizes, e.g. ``MODELS["Qwen2.5-1.5B"]``.
        run: the run; its ``micro_batch_size`` is the one judged.
        card_gib: memory the card offers in GiB, e.g. ``CARDS["T4 16 GB"]``.
        device: "cuda" (adds the context allowance) or "cpu".
    Returns:
        Verdict(fits, peak_bytes, capacity_bytes, largest_micro_batch, message);
        ``largest_micro_batch`` is 0 when not even a micro-batch of 1 fits.
    """
    if card_gib <= 0:
        raise ValueError(f"card_gib must be positive, got {card_gib}")
    capacity = int(card_gib * GIB)
    one = training_memory(shape, run.with_(micro_batch_size=1), device).peak
    per_sample = training_memory(shape, run.with_(micro_batch_size=2), device).peak - one
    largest = max(0, (capacity - one) // per_sample + 1) if capacity >= one else 0
    peak = training_memory(shape, run, device).peak
    ok = peak <= capacity
    message = (
        f"{shape.name}, {run.method}, micro-batch {run.micro_batch_size} x {run.seq_len}: "
        f"{peak / GIB:.2f} of {card_gib:g} GiB, {'fits' if ok else 'does NOT fit'}; "
        + (f"largest micro-batch that fits: {largest}" if largest else "no micro-batch fits")
    )
    return Verdict(ok, peak, capacity, int(largest), message)
