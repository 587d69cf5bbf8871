"""The memory planner (helpers.memory.naive) against measurement (helpers.memory.library).

Tiny random Llama and Qwen2 shapes, built for real by the library twin; the planner never sees
the model. Tolerances: weights, gradients and optimizer state are counted exactly by the
planner up to small tensors it leaves out (bitsandbytes' code books, rotary buffers), so 2%;
saved activations follow a formula per token and layer that ignores a few small tensors, so
10%; the issue asks for the total within 15%.
"""

from __future__ import annotations

import pytest
import torch

from helpers.memory import GIB, PUBLIC_NAMES, ModelShape, RunSpec, library, naive

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


def test_same_public_names():
    for twin in (naive, library):
        assert all(callable(getattr(twin, name, None)) for name in PUBLIC_NAMES), twin.__name__


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
    assert _rel(plan.activations, measured.activations) < 0.10
    assert _rel(plan.tensors, measured.tensors) < 0.15


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
    assert naive.training_memory(shape, run.with_(method="qlora")).weights < plain.weights / 2


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


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="method"):
        RunSpec("prefix-tuning")
    with pytest.raises(ValueError, match="optimizer"):
        RunSpec(optimizer="lion")
    with pytest.raises(ValueError, match="target_modules"):
        naive.training_memory(SHAPES[0], RunSpec(target_modules=("query",)))
    with pytest.raises(ValueError, match="card_gib"):
        naive.fits(SHAPES[0], RunSpec(), 0)


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
