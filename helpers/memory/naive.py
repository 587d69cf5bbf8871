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
- activations: the tensors autograd saves for backward (``activation_bytes``), in every dtype:
  in 16 bits peft's fp32 copy of each adapted layer's input, autocast's 16-bit weight copies
  for full fine-tuning, and the fp32 activations a QLoRA model keeps after
  ``prepare_model_for_kbit_training`` (``RunSpec.kbit_upcast``) are counted.
- transient: backward's workspace on top: the loss's fp32 copies of the logits, and with
  checkpointing one decoder layer recomputed.
- overhead and allocator, on a GPU only: allowances for the CUDA context and for the caching
  allocator's rounding and reserve, which no tensor counter sees. They are not measured yet:
  ``fits`` says its verdicts are CPU-calibrated estimates.
- paged optimizers (``paged_adamw``, ``paged_adamw8bit``) keep the same state in unified
  memory, which the driver can evict to host RAM: ``fits`` reports "fits by paging" when only
  that state is over the card.

Shapes: B micro_batch_size, T seq_len, h hidden_size, i intermediate_size, a = heads x
head_dim, kv = kv heads x head_dim, V vocab_size, L layers, r LoRA rank.
"""

from __future__ import annotations

import math

from helpers.memory import DTYPE_BYTES, GIB, PAGED, MemoryBreakdown, ModelShape, RunSpec, Verdict

# A stated allowance, not a measurement: the CUDA context and the kernels torch loads take a
# few hundred MiB of GPU memory outside any tensor (PyTorch "CUDA semantics" notes, memory
# management); 0.5 GiB is a round upper value for recent torch builds.
CUDA_CONTEXT_BYTES = GIB // 2
# The caching allocator keeps freed blocks for reuse: reserved memory exceeds allocated memory.
# 10 % is a stated allowance (PyTorch "CUDA semantics", memory management), not a measurement.
ALLOCATOR_RESERVE = 0.10
NF4_BLOCKSIZE, DQ_BLOCKSIZE = 64, 256  # QLoRA section 3: blocks of 64, second level of 256
ADAM8_BLOCKSIZE, ADAM8_MIN_SIZE = 256, 4096  # bitsandbytes' blockwise 8-bit states

_QWEN25 = "Qwen2.5 model card and config.json on the Hugging Face hub (Qwen/{}), and Table 1"
_QWEN25 += " of the Qwen2.5 technical report (arXiv:2412.15115)"
MODELS: dict[str, ModelShape] = {
    # hidden, intermediate, layers, heads, kv heads: Qwen/Qwen2.5-0.5B config.json
    "Qwen2.5-0.5B": ModelShape(
        "Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 64, 151936, True, True, _QWEN25.format("Qwen2.5-0.5B")
    ),
    # Qwen/Qwen2.5-1.5B config.json
    "Qwen2.5-1.5B": ModelShape(
        "Qwen2.5-1.5B",
        1536,
        8960,
        28,
        12,
        2,
        128,
        151936,
        True,
        True,
        _QWEN25.format("Qwen2.5-1.5B"),
    ),
    # Qwen/Qwen2.5-3B config.json
    "Qwen2.5-3B": ModelShape(
        "Qwen2.5-3B", 2048, 11008, 36, 16, 2, 128, 151936, True, True, _QWEN25.format("Qwen2.5-3B")
    ),
    # Qwen/Qwen2.5-7B config.json: the embedding matrix is padded to 152,064 rows, untied
    "Qwen2.5-7B": ModelShape(
        "Qwen2.5-7B", 3584, 18944, 28, 28, 4, 128, 152064, False, True, _QWEN25.format("Qwen2.5-7B")
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
    """Bytes of all weights: fp32 (full), compute dtype (LoRA base), NF4 (QLoRA linears).

    QLoRA keeps what is not a decoder linear (embeddings, norms, biases, the head) unquantized:
    in fp32 after ``prepare_model_for_kbit_training`` (``run.kbit_upcast``, the default), in
    the compute dtype as loaded (``kbit_upcast=False``: the size at rest, on disk).
    """
    counts, adapters = parameter_counts(shape), 0
    if run.method != "full":
        adapters = 4 * sum(trainable_sizes(shape, run))  # fp32 adapters
    if run.method == "full":
        return 4 * (counts["linear"] + counts["other"])
    base = DTYPE_BYTES[run.compute_dtype]
    if run.method == "lora":
        return base * (counts["linear"] + counts["other"]) + adapters
    other = 4 if run.kbit_upcast else base
    n_layers = shape.num_layers * len(linear_shapes(shape))
    nf4 = sum(_nf4_bytes(o * i, run.double_quant) for o, i in linear_shapes(shape).values())
    books = 4 * 16 + (4 * 256 + 4 if run.double_quant else 0)  # each layer's code books, offset
    return shape.num_layers * nf4 + other * counts["other"] + adapters + n_layers * books


def _nf4_bytes(n: int, double_quant: bool) -> int:
    """One weight of n values in NF4: two codes per byte, and its absmax per block of 64
    (fp32, or 8-bit with an fp32 scale per 256 absmax under double quantization)."""
    blocks = math.ceil(n / NF4_BLOCKSIZE)
    absmax = blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) if double_quant else 4 * blocks
    return math.ceil(n / 2) + absmax


def optimizer_bytes(sizes: list[int], optimizer: str) -> int:
    """Optimizer state for trainable tensors of the given sizes (see the module docstring)."""
    optimizer = PAGED.get(optimizer, optimizer)  # paging moves the state, not its size
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


def _input_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Per token and layer: the inputs the linear layers save for their weights' gradients.

    fp32: one tensor per distinct input (q, k, v share the first norm's output; gate and up the
    second's; o's input is the attention output, counted there). Full fine-tuning under 16-bit
    autocast: each linear saves its own 16-bit cast of its input (down's input is already
    16-bit, o's is the attention output). LoRA in 16 bits: peft casts the input to the fp32
    adapter's dtype, one fp32 copy per adapted layer (the "LoRA path" copies).
    """
    h, i, a = shape.hidden_size, shape.intermediate_size, shape.num_heads * shape.head_dim
    ins = {n: h for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")}
    ins |= {"o_proj": a, "down_proj": i}
    b = DTYPE_BYTES[run.compute_dtype]
    if run.method == "full" and b < 4:  # autocast: q, k, v, gate, up each cast their input
        return b * (5 * h + i)
    adapted = set(ins) if run.method == "full" else set(run.target_modules)
    if b < 4:
        return 4 * sum(ins[n] for n in adapted)
    groups = [({"q_proj", "k_proj", "v_proj"}, h), ({"gate_proj", "up_proj"}, h)]
    groups.append(({"down_proj"}, i))
    return 4 * sum(size for names, size in groups if names & adapted)


def _layer_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Per token: what one decoder layer saves for backward (no checkpointing)."""
    h, i = shape.hidden_size, shape.intermediate_size
    a, heads = shape.num_heads * shape.head_dim, shape.num_heads
    b, full = DTYPE_BYTES[run.compute_dtype], run.method == "full"
    # sdpa saves q, k and v (repeated to every head unless a single kv head makes it a view),
    # its output and an fp32 log-sum-exp per head; plus the T-wide 4-D mask of a padded batch
    kv = shape.num_kv_heads * shape.head_dim if shape.num_kv_heads == 1 else a
    attention = b * (2 * a + 2 * kv + run.seq_len) + 4 * heads
    mlp = b * 3 * i  # gate, silu(gate), up
    # RMSNorm computes in fp32: its fp32 input (or upcast copy) and 1/rms; full fine-tuning also
    # keeps the normalised value for the norm weight's gradient
    norms = 2 * (4 * h + 4 + (4 * h if full else 0))
    lora = 0 if full else 4 * run.lora_r * len(run.target_modules)  # A's output, fp32
    return norms + attention + mlp + _input_bytes(shape, run) + lora


def _head_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Per token: the final norm, the head's input (full), the loss's fp32 log-probabilities
    (V values: the largest activation of a 151,936-token vocabulary), the int64 labels."""
    h, b, full = shape.hidden_size, DTYPE_BYTES[run.compute_dtype], run.method == "full"
    norm = 4 * h + 4 + (4 * h if full else 0)
    head_input = (b if b < 4 else 4) * h if full else 0
    return norm + head_input + 4 * shape.vocab_size + 8


def activation_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Bytes autograd saves for backward during one micro-batch's forward pass.

    Counted tensor by tensor from what transformers' Llama/Qwen2 (sdpa attention), peft's LoRA
    and torch's autocast save, checked against saved-tensor hooks (tests/test_memory.py): see
    ``_layer_bytes``, ``_input_bytes`` and ``_head_bytes``. Full fine-tuning in 16 bits runs
    under autocast, which also keeps a 16-bit copy of every linear weight (and the head) for
    backward. With LoRA the embeddings are frozen, so the first norm saves nothing. With
    checkpointing only each layer's input (the residual stream) is kept; the rest is recomputed.
    Shapes: B micro_batch_size, T seq_len; bytes = B*T * (per-token terms) + per-step terms.
    """
    run = _activation_run(run)
    b, tokens = DTYPE_BYTES[run.compute_dtype], run.micro_batch_size * run.seq_len
    full, h = run.method == "full", shape.hidden_size
    casts = 0
    if full and b < 4:  # autocast's 16-bit weight copies (the head's even with checkpointing)
        casts = b * shape.vocab_size * h
        if not run.gradient_checkpointing:
            casts += b * parameter_counts(shape)["linear"]
    if run.gradient_checkpointing:
        residual = 4 if full else b  # the residual stream: fp32 under autocast
        per_token = shape.num_layers * residual * h + _head_bytes(shape, run)
        return tokens * (per_token + 8 * full) + casts
    rope = 2 * shape.head_dim * (4 if full else b)  # cos and sin, shared by every layer
    per_token = shape.num_layers * _layer_bytes(shape, run) + _head_bytes(shape, run) + rope
    if not full:
        per_token -= 4 * h + 4  # layer 0's first norm: nothing before it needs a gradient
    return tokens * (per_token + 8 * full) + casts  # full: the int64 input ids (embedding)


def _activation_run(run: RunSpec) -> RunSpec:
    """The run as its activations see it. After ``prepare_model_for_kbit_training`` the fp32
    embeddings make the residual stream fp32, and bitsandbytes' 4-bit layers return their
    input's dtype, so without autocast a QLoRA forward keeps fp32 activations (measured)."""
    if run.method == "qlora" and run.kbit_upcast:
        return run.with_(compute_dtype="float32")
    return run


def transient_bytes(shape: ModelShape, run: RunSpec) -> int:
    """Backward's extra: the loss's copies of the logits, and a recomputed layer if checkpointing.

    Cross-entropy's backward holds, beside the saved fp32 log-probabilities, the gradient coming
    in and the fp32 gradient of the logits (2 x 4V per token), plus its 16-bit cast in 16-bit
    runs. An estimate from the operations' shapes, not a measurement (a CPU cannot see it).
    """
    run = _activation_run(run)
    tokens, b = run.micro_batch_size * run.seq_len, DTYPE_BYTES[run.compute_dtype]
    extra = tokens * shape.vocab_size * (8 + (b if b < 4 else 0))
    if run.gradient_checkpointing:  # one layer's saved tensors exist again while it backprops
        extra += tokens * _layer_bytes(shape, run)
    return extra


def allocator_bytes(shape: ModelShape, run: RunSpec, tensors: int) -> int:
    """On a GPU: what the caching allocator reserves beyond the tensors' own bytes.

    Every block is rounded up to 512 bytes (one per parameter tensor counted here), and the
    allocator keeps freed blocks cached; ALLOCATOR_RESERVE of the tensors' bytes stands for that
    fragmentation. An allowance from PyTorch's documented rounding, not a measurement.
    """
    rounding = 512 * (len(parameter_sizes(shape)) + 2 * len(trainable_sizes(shape, run)))
    return rounding + int(ALLOCATOR_RESERVE * tensors)


def training_memory(shape: ModelShape, run: RunSpec, device: str = "cuda") -> MemoryBreakdown:
    """Plan one training step's memory.

    Args:
        shape: the model's sizes (``MODELS[...]`` or ``ModelShape.from_config``).
        run: method, micro-batch, sequence length, dtypes, optimizer, checkpointing.
        device: "cuda" adds the CUDA context and the allocator's allowance; "cpu" does not.
    Returns:
        A MemoryBreakdown in bytes; ``.peak`` is the planned peak.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    sizes = trainable_sizes(shape, run)
    parts = {
        "weights": weight_bytes(shape, run),
        "gradients": 4 * sum(sizes),
        "optimizer": optimizer_bytes(sizes, run.optimizer),
        "activations": activation_bytes(shape, run),
        "transient": transient_bytes(shape, run),
    }
    gpu = device == "cuda"
    return MemoryBreakdown(
        **parts,
        overhead=CUDA_CONTEXT_BYTES if gpu else 0,
        allocator=allocator_bytes(shape, run, sum(parts.values())) if gpu else 0,
    )


def check_card_gib(card_gib: object) -> None:
    """A card's memory in GiB, a finite number above 0 (both twins' ``fits`` check it)."""
    ok = isinstance(card_gib, int | float) and not isinstance(card_gib, bool)
    if not ok or not math.isfinite(card_gib) or not card_gib > 0:
        raise ValueError(f"card_gib must be a positive number of GiB, got {card_gib!r}")


def fits(shape: ModelShape, run: RunSpec, card_gib: float, device: str = "cuda") -> Verdict:
    """Does this run fit a card, and what is the largest micro-batch that does?

    Uses the planner (``training_memory``): weights + gradients + optimizer state + saved
    activations + backward workspace, and on a GPU the CUDA context and the allocator's
    allowance. Saved activations match autograd's saved tensors on a CPU within 2 % (fp32,
    fp16, bf16; tests/test_memory.py); the GPU terms are allowances: until measured against
    ``torch.cuda.max_memory_reserved``, every verdict says it is a CPU-calibrated estimate.
    A paged optimizer's state can be evicted to host memory under pressure, so a run that
    fits only without it is reported as fitting by paging.

    Args:
        shape: model sizes, e.g. ``MODELS["Qwen2.5-1.5B"]``.
        run: the run; its ``micro_batch_size`` is the one judged.
        card_gib: memory the card offers in GiB, e.g. ``CARDS["T4 16 GB"]``.
        device: "cuda" (adds the GPU terms) or "cpu".
    Returns:
        Verdict(fits, peak_bytes, capacity_bytes, largest_micro_batch, message);
        ``largest_micro_batch`` is 0 when not even a micro-batch of 1 fits.
    """
    check_card_gib(card_gib)
    capacity = int(card_gib * GIB)
    paged = run.optimizer in PAGED

    def need(micro_batch_size: int) -> int:
        plan = training_memory(shape, run.with_(micro_batch_size=micro_batch_size), device)
        return plan.peak - (plan.optimizer if paged else 0)

    largest = 0
    if need(1) <= capacity:  # the peak grows with the micro-batch: double, then bisect
        low, high = 1, 2
        while need(high) <= capacity:
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if need(mid) <= capacity else (low, mid)
        largest = low
    peak = training_memory(shape, run, device).peak
    ok = need(run.micro_batch_size) <= capacity
    plan = training_memory(shape, run, device)
    paging = f"fits by paging ({plan.optimizer / GIB:.2f} GiB of optimizer state to host, slower)"
    how = "fits" if peak <= capacity else (paging if ok else "does NOT fit")
    caveat = (
        " (planned: CPU-calibrated estimate, not measured on a GPU)" if device == "cuda" else ""
    )
    message = (
        f"{shape.name}, {run.method}, micro-batch {run.micro_batch_size} x {run.seq_len}: "
        f"{peak / GIB:.2f} of {card_gib:g} GiB, {how}{caveat}; "
        + (f"largest micro-batch that fits: {largest}" if largest else "no micro-batch fits")
    )
    return Verdict(ok, peak, capacity, int(largest), message)
