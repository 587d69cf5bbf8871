"""The memory budget of a fine-tuning run (chapter 04): plan it, then measure it.

Two twins with the same public names, imported explicitly:

    from helpers.memory import naive, library

``naive`` is the planner: peak memory from first principles (bytes of weights, gradients,
optimizer state, saved activations, backward workspace, a CUDA context allowance), for any
model shape, so it can answer "does an 8B model fit a T4?" without the model. ``library``
measures the same categories on a real (randomly initialised) model of that shape:
``torch.cuda.max_memory_allocated`` on a GPU, live tensor bytes on a CPU.

The shared data types live here (no torch import): ``ModelShape``, ``RunSpec``,
``MemoryBreakdown``, ``Verdict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from helpers.constants import GIB  # chapters import it from here too

PUBLIC_NAMES = ("training_memory", "fits")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit", "sgd")
PAGED = {"paged_adamw": "adamw", "paged_adamw8bit": "adamw8bit"}  # paged: same bytes, evictable


def _check_int(owner: str, name: str, value, low: int) -> None:
    """Raise a ValueError naming ``owner.name`` unless value is an int >= low."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{owner}.{name} must be >= {low}, got {value}")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (Llama, Qwen2, Mistral share this layout)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v
    source: str = ""

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            _check_int("ModelShape", name, getattr(self, name), 1)
        for name in ("num_kv_heads", "head_dim", "vocab_size"):
            _check_int("ModelShape", name, getattr(self, name), 1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelShape.num_kv_heads ({self.num_kv_heads}) must divide "
                f"num_heads ({self.num_heads})"
            )

    @classmethod
    def from_config(cls, config, name: str = "model") -> ModelShape:
        """Read the sizes from a transformers config (LlamaConfig, Qwen2Config, ...)."""
        heads = config.num_attention_heads
        return cls(
            name=name,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=config.model_type == "qwen2",
            source="read from the model's config",
        )


@dataclass(frozen=True)
class RunSpec:
    """How a run trains: method, sizes, dtypes, optimizer, checkpointing."""

    method: str = "lora"  # "full" | "lora" | "qlora"
    micro_batch_size: int = 1
    seq_len: int = 512
    compute_dtype: str = "float16"
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" | "sgd"
    gradient_checkpointing: bool = False
    lora_r: int = 16
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip
    double_quant: bool = True  # QLoRA's double quantization of the NF4 absmax
    # QLoRA only: prepare_model_for_kbit_training casts every 16-bit parameter that is not
    # quantized (embeddings, norms, head) to fp32. False: the model as loaded, 16-bit at rest.
    kbit_upcast: bool = True

    def __post_init__(self):
        _check_int("RunSpec", "micro_batch_size", self.micro_batch_size, 1)
        _check_int("RunSpec", "seq_len", self.seq_len, 2)
        _check_int("RunSpec", "lora_r", self.lora_r, 1)
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                f"RunSpec.target_modules must be a non-empty tuple of layer names, "
                f"got {self.target_modules!r}"
            )
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.compute_dtype in DTYPE_BYTES, f"compute_dtype must be one of {[*DTYPE_BYTES]}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RunSpec: {message}")

    def with_(self, **changes) -> RunSpec:
        """A copy with some fields changed, e.g. ``run.with_(micro_batch_size=4)``."""
        return replace(self, **changes)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes by category. ``peak`` is the whole; the planner fills every field, a CPU
    measurement leaves ``transient`` and ``overhead`` at 0 (it cannot see them)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # tensors autograd keeps for backward, at the end of the forward pass
    transient: int = 0  # backward workspace on top (logits' gradient, a recomputed layer)
    overhead: int = 0  # CUDA context allowance
    measured_peak: int | None = None  # torch.cuda.max_memory_allocated, when measured on a GPU
    notes: dict = field(default_factory=dict, compare=False)
    allocator: int = 0  # on a GPU: the caching allocator's rounding and reserve (an allowance)

    @property
    def tensors(self) -> int:
        """Weights + gradients + optimizer state + saved activations: what both twins count."""
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def peak(self) -> int:
        if self.measured_peak is not None:
            return self.measured_peak + self.overhead
        return self.tensors + self.transient + self.overhead + self.allocator

    def gib(self) -> dict[str, float]:
        """Each category and the peak in GiB, rounded to 3 decimals."""
        names = ("weights", "gradients", "optimizer", "activations", "transient", "overhead")
        names += ("allocator",)
        out = {name: round(getattr(self, name) / GIB, 3) for name in names}
        out["peak"] = round(self.peak / GIB, 3)
        return out


@dataclass(frozen=True)
class Verdict:
    """The answer of ``fits``: does the run fit the card, and the largest micro-batch that does."""

    fits: bool
    peak_bytes: int
    capacity_bytes: int
    largest_micro_batch: int  # 0: not even a micro-batch of 1 fits
    message: str
