"""The memory planner (helpers.memory.naive) against measurement (helpers.memory.library).

Tiny random Llama and Qwen2 shapes, built for real by the library twin; the planner never sees
the model. Tolerances: weights, gradients and optimizer state are counted exactly by the
planner up to small tensors it leaves out (bitsandbytes' code books, rotary buffers), so 2%;
saved activations follow a formula per token and layer that ignores a few small tensors: 5%
in every dtype (fp32, and fp16/bf16 where peft's fp32 copies of adapted inputs, autocast's
weight copies and prepare_model_for_kbit_training's fp32 residual stream change what is saved).
"""

from __future__ import annotations

import pytest
import torch

from helpers.memory import GIB, ModelShape, RunSpec, library, naive

SHAPES = [
    ModelShape("tiny-llama", 64, 160, 2, 2, 1, 32, 300),
    ModelShape("tiny-qwen2", 96, 192, 2, 3, 1, 32, 260, tie_embeddings=True, qkv_bias=True),
]
RUNS = [
    RunSpec("full", 2, 24, "float32"),
    RunSpec("full", 3, 16, "float32", gradient_checkpointing=True, optimizer="adamw8bit"),
    RunSpec("lora", 2, 32, "float32", lora_r=4),
    RunSpec("lora", 4, 16, "float32", lora_r=8, gradient_checkpointing=True),
    RunSpec("qlora", 2, 24, "float32", lora_r=4, optimizer="sgd"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one thread is much faster. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rel(planned: int, measured: int) -> float:
    return abs(planned - measured) / measured


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r.method}-ckpt{r.gradient_checkpointing}")
def test_planner_matches_measurement(shape, run):
    # a fresh micro-batch size each time: the formula must hold for any, not one we tuned
    run = run.with_(micro_batch_size=int(torch.randint(1, 5, ())))
    plan = naive.training_memory(shape, run, device="cpu")
    measured = library.training_memory(shape, run, device="cpu")
    for name in ("weights", "gradients", "optimizer"):
        planned, got = getattr(plan, name), getattr(measured, name)
        assert got == planned == 0 or _rel(planned, got) < 0.02, (name, planned, got)
    assert _rel(plan.activations, measured.activations) < 0.05
    assert _rel(plan.tensors, measured.tensors) < 0.05


# One shape with grouped-query attention (2 kv heads: real repeat copies), q/k/v biases and tied
# embeddings, like Qwen2.5; every dtype x method x checkpointing, measured by saved-tensor hooks.
GQA = ModelShape("tiny-gqa", 96, 160, 2, 4, 2, 32, 400, tie_embeddings=True, qkv_bias=True)
GRID = [
    ("full", {}),
    ("lora", {}),
    ("lora", {"target_modules": ("q_proj", "v_proj")}),
    ("qlora", {}),
    ("qlora", {"kbit_upcast": False}),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("method,extra", GRID, ids=lambda x: x if isinstance(x, str) else str(x))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_saved_activations_in_every_dtype(dtype, method, extra, checkpointing):
    run = RunSpec(method, 2, 20, dtype, gradient_checkpointing=checkpointing, lora_r=4, **extra)
    planned = naive.training_memory(GQA, run, device="cpu").activations
    measured = library.training_memory(GQA, run, device="cpu").activations
    assert _rel(planned, measured) < 0.05, (planned, measured)


def test_16bit_terms_are_counted():
    # what a 16-bit LoRA run saves beyond the fp32 formula: peft's fp32 copy of each adapted
    # layer's input; the loss's fp32 log-probabilities stay fp32 in every dtype
    shape = naive.MODELS["Qwen2.5-1.5B"]
    run = RunSpec("lora", 1, 512, "float16")
    qv = run.with_(target_modules=("q_proj", "v_proj"))
    h = shape.hidden_size
    extra = naive.activation_bytes(shape, run) - naive.activation_bytes(shape, qv)
    assert extra > 512 * shape.num_layers * 4 * (5 * h)  # > the five fp32 h-wide input copies
    assert naive.activation_bytes(shape, run) > 512 * 4 * shape.vocab_size


def test_kbit_upcast_sizes():
    # Qwen2.5-7B: embeddings and head (untied, 152,064 rows) stay unquantized: about 5.3 GiB
    # at 16-bit rest and 7.3 GiB once prepare_model_for_kbit_training casts them to fp32
    shape = naive.MODELS["Qwen2.5-7B"]
    rest = naive.weight_bytes(shape, RunSpec("qlora", kbit_upcast=False)) / GIB
    prepared = naive.weight_bytes(shape, RunSpec("qlora")) / GIB
    counts = naive.parameter_counts(shape)
    assert prepared - rest == pytest.approx(2 * counts["other"] / GIB)
    assert 5.0 < rest < 5.5 and 7.0 < prepared < 7.6
    # the flag changes only QLoRA
    lora = RunSpec("lora")
    assert naive.weight_bytes(shape, lora) == naive.weight_bytes(shape, lora.with_(kbit_upcast=0))


def test_gpu_terms_and_caveat():
    shape, run = naive.MODELS["Qwen2.5-1.5B"], RunSpec("qlora", 2, 512, gradient_checkpointing=True)
    gpu, cpu = naive.training_memory(shape, run), naive.training_memory(shape, run, device="cpu")
    assert gpu.overhead == naive.CUDA_CONTEXT_BYTES and gpu.allocator > 0
    assert cpu.overhead == cpu.allocator == 0 and gpu.peak > cpu.peak
    assert "CPU-calibrated estimate" in naive.fits(shape, run, 14.7).message
    assert "CPU-calibrated" not in naive.fits(shape, run, 14.7, device="cpu").message


def test_paged_optimizer_fits_by_paging():
    # same bytes as the unpaged state, but evictable: a card that holds everything except the
    # optimizer state fits by paging; one that does not hold the rest does not fit
    shape, run = naive.MODELS["Qwen2.5-0.5B"], RunSpec("full", 1, 256, optimizer="paged_adamw")
    plan = naive.training_memory(shape, run)
    assert plan.optimizer == naive.training_memory(shape, run.with_(optimizer="adamw")).optimizer
    card = (plan.peak - plan.optimizer // 2) / GIB
    verdict = naive.fits(shape, run, card)
    assert verdict.fits and "fits by paging" in verdict.message
    assert not naive.fits(shape, run.with_(optimizer="adamw"), card).fits
    assert not naive.fits(shape, run, (plan.peak - plan.optimizer) / GIB * 0.9).fits


def test_published_parameter_counts():
    # Totals published with the models: Qwen2.5 report Table 1 (0.49B, 1.54B, 3.09B);
    # Llama 3.1 8B: 8.03B (model card). The shapes must reproduce them.
    published = {"Qwen2.5-0.5B": 0.49e9, "Qwen2.5-1.5B": 1.54e9, "Qwen2.5-3B": 3.09e9}
    published["Llama-3.1-8B"] = 8.03e9
    for name, total in published.items():
        counts = naive.parameter_counts(naive.MODELS[name])
        assert _rel(counts["linear"] + counts["other"], total) < 0.01, name


def test_checkpointing_and_8bit_save_memory():
    shape, run = naive.MODELS["Qwen2.5-1.5B"], RunSpec("lora", 4, 512)
    plain = naive.training_memory(shape, run)
    assert naive.training_memory(shape, run.with_(gradient_checkpointing=True)).activations < (
        plain.activations / 4
    )
    full = RunSpec("full", 1, 512)
    assert naive.training_memory(shape, full.with_(optimizer="adamw8bit")).optimizer < (
        naive.training_memory(shape, full).optimizer / 3
    )
    at_rest = run.with_(method="qlora", kbit_upcast=False)
    assert naive.training_memory(shape, at_rest).weights < plain.weights / 2
    assert naive.training_memory(shape, run.with_(method="qlora")).weights < plain.weights * 0.6


def test_fits_verdicts():
    run = RunSpec("qlora", 1, 512, gradient_checkpointing=True)
    small = naive.fits(naive.MODELS["Qwen2.5-0.5B"], run, naive.CARDS["T4 16 GB"])
    assert small.fits and small.largest_micro_batch > 1 and "fits" in small.message
    huge = naive.fits(naive.MODELS["Llama-3.1-8B"], RunSpec("full", 1, 512), 24.0)
    assert not huge.fits and huge.largest_micro_batch == 0 and "does NOT fit" in huge.message
    # the largest micro-batch is exact: it fits, one more does not
    shape, card = naive.MODELS["Qwen2.5-1.5B"], naive.CARDS["T4 16 GB"]
    best = naive.fits(shape, RunSpec("lora", 1, 1024), card).largest_micro_batch
    assert naive.fits(shape, RunSpec("lora", best, 1024), card).fits
    assert not naive.fits(shape, RunSpec("lora", best + 1, 1024), card).fits


def test_library_fits_measures():
    shape, run = SHAPES[0], RunSpec("lora", 2, 16, "float32", lora_r=4)
    needed = library.training_memory(shape, run, "cpu").peak
    assert library.fits(shape, run, 2 * needed / GIB, "cpu").fits
    assert not library.fits(shape, run, 0.5 * needed / GIB, "cpu").fits


@pytest.mark.parametrize(
    "kwargs,error,field",
    [
        ({"lora_r": -4}, ValueError, "lora_r"),
        ({"lora_r": 0}, ValueError, "lora_r"),
        ({"micro_batch_size": 1.5}, ValueError, "micro_batch_size"),
        ({"micro_batch_size": 0}, ValueError, "micro_batch_size"),
        ({"seq_len": 1}, ValueError, "seq_len"),
        ({"seq_len": "512"}, ValueError, "seq_len"),
        ({"target_modules": "q_proj"}, ValueError, "target_modules"),
        ({"compute_dtype": "float64"}, ValueError, "compute_dtype"),
    ],
)
def test_bad_run_fields_are_named(kwargs, error, field):
    with pytest.raises(error, match=field):
        RunSpec(**kwargs)


@pytest.mark.parametrize("field", ["hidden_size", "num_layers", "vocab_size", "num_kv_heads"])
def test_bad_shape_fields_are_named(field):
    values = dict(name="x", hidden_size=64, intermediate_size=160, num_layers=2, num_heads=2)
    values |= dict(num_kv_heads=1, head_dim=32, vocab_size=300)
    with pytest.raises(ValueError, match=field):
        ModelShape(**{**values, field: -64})
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelShape(**{**values, "num_kv_heads": 3, "num_heads": 4})


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="method"):
        RunSpec("prefix-tuning")
    with pytest.raises(ValueError, match="optimizer"):
        RunSpec(optimizer="lion")
    with pytest.raises(ValueError, match="target_modules"):
        naive.training_memory(SHAPES[0], RunSpec(target_modules=("query",)))
    with pytest.raises(ValueError, match="card_gib"):
        naive.fits(SHAPES[0], RunSpec(), 0)
    with pytest.raises(ValueError, match="card_gib"):
        naive.fits(SHAPES[0], RunSpec(), float("nan"))
    with pytest.raises(ValueError, match="device"):
        naive.training_memory(SHAPES[0], RunSpec(), device="tpu")


@pytest.mark.gpu
def test_planner_against_cuda_activations():
    # Checked on an H100 (torch 2.11): fp32 saved activations match within 2%. The planned
    # *peak* is known to be low on a GPU (25-65% under max_memory_allocated on small shapes:
    # cuBLAS workspace, autocast copies, allocator rounding, fp32 norms under fp16), so only
    # the fp32 activations are asserted here; see the chapter 04 report.
    shape = ModelShape("gpu-check", 512, 1408, 4, 8, 2, 64, 8000)
    for run in (RunSpec("lora", 8, 128, "float32"), RunSpec("full", 2, 256, "float32")):
        plan = naive.training_memory(shape, run, device="cuda")
        measured = library.training_memory(shape, run, device="cuda")
        assert _rel(plan.activations, measured.activations) < 0.15
