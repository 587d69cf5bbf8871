"""GPU profiles, checked on a real GPU that emulates the target card.

A T4 is emulated by capping this process at the card's memory
(``torch.cuda.set_per_process_memory_fraction``) and computing in fp16 only. The real models
cannot be downloaded in CI or on a lent GPU with no hub access, so each test builds a randomly
initialised model of the profile's architecture (same shapes, hence the same memory), stores
it in 4 bits through transformers + bitsandbytes, adds LoRA with peft, and trains a few steps at
the profile's micro-batch and full sequence length. Peak memory and tokens per second are
printed (``pytest -s``) and written to ``$COURSE_GPU_REPORT`` when set.

Skipped, and reported as skipped, without a CUDA GPU.
"""

from __future__ import annotations

import gc
import json
import os
import time

import pytest
import torch

from helpers.constants import GIB

pytestmark = pytest.mark.gpu

# Shapes from the models' config.json on the Hugging Face hub (Qwen2.5 series).
QWEN25 = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}


def _random_4bit_model(profile, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from helpers.models import quantization_config

    config = Qwen2Config(
        vocab_size=151936, max_position_embeddings=4096, **QWEN25[profile.model_id]
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.float16).save_pretrained(tmp_path / "model")
    return AutoModelForCausalLM.from_pretrained(
        tmp_path / "model",
        dtype=profile.torch_dtype,
        quantization_config=quantization_config(profile),
        device_map={"": 0},
    )


def _train_steps(model, profile, steps: int) -> float:
    """Train ``steps`` optimizer steps on random full-length batches; return seconds."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=profile.gradient_checkpointing
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=profile.lora_r,
            lora_alpha=profile.lora_alpha,
            target_modules=list(profile.target_modules),
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=profile.compute_dtype == "float16")
    shape = (profile.micro_batch_size, profile.max_seq_len)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        for _ in range(profile.grad_accum_steps):
            ids = torch.randint(0, 151936, shape, device="cuda")
            with torch.autocast("cuda", dtype=profile.torch_dtype):
                loss = model(input_ids=ids, labels=ids).loss / profile.grad_accum_steps
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    assert torch.isfinite(loss)
    return time.perf_counter() - start


@pytest.mark.parametrize(("profile_name", "card_gib"), [("t4", 15.0), ("gpu-4gb", 4.0)])
def test_profile_trains_within_the_card(profile_name, card_gib, tmp_path):
    from helpers.profiles import get_profile

    profile = get_profile(profile_name)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, card_gib * GIB / total))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = None
    try:
        model = _random_4bit_model(profile, tmp_path)
        steps = 3
        seconds = _train_steps(model, profile, steps)
        peak = torch.cuda.max_memory_allocated() / GIB
    finally:
        model = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
    tokens = steps * profile.grad_accum_steps * profile.micro_batch_size * profile.max_seq_len
    result = {
        "profile": profile_name,
        "card_gib": card_gib,
        "peak_gib": round(peak, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "gpu": torch.cuda.get_device_name(0),
    }
    print(json.dumps(result))
    if os.environ.get("COURSE_GPU_REPORT"):
        with open(os.environ["COURSE_GPU_REPORT"], "a") as f:
            f.write(json.dumps(result) + "\n")
    assert peak < card_gib


def test_tiny_qlora_fp16_step_on_cuda():
    """The course's own training loop in fp16 with loss scaling, on a 4-bit tiny model."""
    from peft import LoraConfig, get_peft_model

    from helpers.data import load_task
    from helpers.models import load_model
    from helpers.profiles import get_profile
    from helpers.train import train

    profile = get_profile("tiny", compute_dtype="float16")
    model, tok = load_model(profile, load_in_4bit=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"]))
    for p in model.parameters():  # LoRA weights train in fp32; fp16 is for compute only
        if p.requires_grad:
            p.data = p.data.float()
    losses = train(
        model,
        tok,
        load_task("train"),
        max_steps=5,
        micro_batch_size=8,
        lr=3e-3,
        mixed_precision="fp16",
        progress=False,
    )
    assert all(torch.isfinite(torch.tensor(losses)))
