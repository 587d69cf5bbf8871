"""QLoRA twins: naive (chapter 01's NF4 + chapter 02's LoRA) against bitsandbytes + peft, and
the checkpoint / resume workflow. Tiny random Llama configs, fresh random inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from helpers.data import load_task
from helpers.lora import library as lora_library
from helpers.lora import naive as lora_naive
from helpers.paths import TINY_MODEL_DIR
from helpers.qlora import checkpoint, library, naive
from helpers.quantization.measure import quantizable_linears

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A random two-layer Llama saved as safetensors (hidden sizes divisible by 64)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-random-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def copy_absmax_codes(dst: nn.Module, src: nn.Module) -> None:
    """Give the naive model bitsandbytes' 8-bit absmax codes (the one place they may differ:
    bnb's CPU search of the 256-level code is approximate, see tests/test_quantization.py)."""
    pairs = zip(quantizable_linears(dst).values(), quantizable_linears(src).values(), strict=True)
    for ours, theirs in pairs:
        ours.absmax.copy_(theirs.weight.quant_state.absmax)


def both_4bit(model_dir, dropout=0.0):
    """The same checkpoint in both twins, with the same codes and the same LoRA init."""
    ours = naive.load_4bit(model_dir, torch.float32)
    theirs = library.load_4bit(model_dir, torch.float32)
    copy_absmax_codes(ours, theirs)
    ours = naive.add_lora(naive.prepare_for_kbit_training(ours), 4, 8, TARGETS, dropout)
    theirs = library.add_lora(library.prepare_for_kbit_training(theirs), 4, 8, TARGETS, dropout)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapters do something
                param.normal_(std=0.05)
    lora_library.load_lora_state_dict(theirs, lora_naive.lora_state_dict(ours))
    return ours, theirs


@pytest.mark.parametrize("double_quant", [True, False])
def test_layer_codes_and_outputs(double_quant):
    """Packed NF4 codes are bit-exact; given the same absmax codes, so are the outputs (both
    dequantize the same way and call the same F.linear)."""
    linear = nn.Linear(192, 96, bias=True)  # 18,432 values: 288 blocks, two absmax2 blocks
    ours = naive.quantize_model(nn.Sequential(copy.deepcopy(linear)), torch.float32, double_quant)
    theirs = library.quantize_model(nn.Sequential(linear), torch.float32, double_quant)
    assert torch.equal(ours[0].weight, theirs[0].weight.reshape(-1))
    state = theirs[0].weight.quant_state
    agree = (ours[0].absmax == state.absmax).float().mean().item()
    assert agree == 1.0 if not double_quant else agree >= 0.98
    if double_quant:
        copy_absmax_codes(ours, theirs)
    x = torch.randn(5, 7, 192)  # no seed: must hold for any input
    assert torch.equal(ours(x), theirs(x))


def test_model_parity_forward_and_backward(model_dir):
    ours, theirs = both_4bit(model_dir)
    ids = torch.randint(0, ours.config.vocab_size, (3, 24))
    out_ours, out_theirs = ours(ids, labels=ids), theirs(ids, labels=ids)
    assert torch.equal(out_ours.logits, out_theirs.logits)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    grads_theirs = {n.replace(".default", ""): p.grad for n, p in theirs.named_parameters()}
    grads = [
        (p.grad, grads_theirs["base_model.model." + n])
        for n, p in ours.named_parameters()
        if p.requires_grad
    ]
    assert len(grads) == 2 * 7 * 2  # A and B, seven targets, two layers
    for ours_grad, theirs_grad in grads:
        # the backward graphs differ (our re-dequantizing Function vs bnb's MatMul4Bit, peft's
        # per-adapter loop): same math, summation order may differ -> fp32 rounding tolerance
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)


def test_only_adapters_train_in_fp32(model_dir):
    model = naive.load_4bit(model_dir, torch.float16)
    model = naive.add_lora(naive.prepare_for_kbit_training(model), 4, 8, TARGETS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".lora_" in n and p.dtype == torch.float32 for n, p in trainable.items()
    )
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    assert isinstance(model.model.layers[0].mlp.down_proj.base_layer, naive.Linear4bit)


def test_base_bytes_agree_and_shrink(model_dir):
    fp32 = sum(p.numel() * 4 for p in LlamaForCausalLM.from_pretrained(model_dir).parameters())
    sizes = {}
    for dq in (False, True):
        ours = naive.base_bytes(naive.load_4bit(model_dir, torch.float32, dq))
        assert ours == library.base_bytes(library.load_4bit(model_dir, torch.float32, dq))
        sizes[dq] = ours
    assert sizes[True] < sizes[False] < fp32


@pytest.mark.parametrize("twin", [naive, library])
def test_merge_right_and_wrong(model_dir, twin):
    """Dequantize-then-merge reproduces the QLoRA model up to fp32 rounding; merging into 4-bit
    weights does not (re-quantization error, far above rounding)."""
    models = dict(zip((naive, library), both_4bit(model_dir), strict=True))
    model = models[twin]
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        reference = model(ids).logits
        merged = twin.merge_and_dequantize(copy.deepcopy(model))
        right = merged(ids).logits
        wrong = twin.merge_into_4bit(copy.deepcopy(model))(ids).logits
    right_err, wrong_err = (right - reference).abs().max(), (wrong - reference).abs().max()
    assert right_err < 1e-4  # fp32 rounding of W + s B A against W x + s B (A x)
    assert wrong_err > 100 * right_err
    assert not any(isinstance(m, twin.Linear4bit) for m in merged.modules())


def test_merges_agree_between_twins(model_dir):
    ours, theirs = both_4bit(model_dir)
    ours, theirs = naive.merge_and_dequantize(ours), library.merge_and_dequantize(theirs)
    for (name, a), (_, b) in zip(
        quantizable_linears(ours).items(), quantizable_linears(theirs).items(), strict=True
    ):
        # same W_deq + s B A; peft multiplies in another order -> rounding only
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-7, msg=name)


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = checkpoint.capture_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.restore_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


@pytest.mark.parametrize("twin", [naive, library])
def test_resume_is_bit_identical(model_dir, tokenizer, tmp_path, twin):
    """An uninterrupted run and a run stopped after step 3 (last checkpoint: step 2) and resumed
    by a fresh model with a different LoRA init end with identical adapters and losses. LoRA
    dropout makes the restored RNG state matter."""
    data = load_task("train").select(range(48))
    kwargs = dict(
        max_steps=5,
        save_every=2,
        micro_batch_size=4,
        lr=1e-3,
        max_seq_len=64,
        warmup_steps=2,
        progress=False,
    )

    def build(seed):
        torch.manual_seed(seed)
        model = twin.prepare_for_kbit_training(twin.load_4bit(model_dir, torch.float32))
        return twin.add_lora(model, 4, 8, TARGETS, dropout=0.1)

    whole = build(0)
    losses = checkpoint.train_with_checkpoints(
        whole, tokenizer, data, folder=tmp_path / "a", **kwargs
    )
    checkpoint.train_with_checkpoints(
        build(0), tokenizer, data, folder=tmp_path / "b", stop_after=3, **kwargs
    )
    assert checkpoint.latest_checkpoint(tmp_path / "b").name == "checkpoint-0000002"
    resumed = build(1)
    resumed_losses = checkpoint.train_with_checkpoints(
        resumed, tokenizer, data, folder=tmp_path / "b", **kwargs
    )
    assert resumed_losses == losses
    ours, theirs = checkpoint.trainable_state(whole), checkpoint.trainable_state(resumed)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_checkpoint_refuses_other_model(model_dir, tokenizer, tmp_path):
    data = load_task("train").select(range(8))
    model = naive.add_lora(naive.load_4bit(model_dir, torch.float32), 4, 8, ("q_proj",))
    checkpoint.train_with_checkpoints(
        model,
        tokenizer,
        data,
        folder=tmp_path,
        max_steps=1,
        save_every=1,
        micro_batch_size=4,
        lr=1e-3,
        progress=False,
    )
    other = naive.add_lora(naive.load_4bit(model_dir, torch.float32), 4, 8, ("v_proj",))
    optimizer = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    with pytest.raises(KeyError, match="does not fit"):
        checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path), other, optimizer)
    frozen = naive.load_4bit(model_dir, torch.float32)
    naive.prepare_for_kbit_training(frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        checkpoint.train_with_checkpoints(
            frozen,
            tokenizer,
            data,
            folder=tmp_path,
            max_steps=1,
            save_every=1,
            micro_batch_size=4,
            lr=1e-3,
        )


def test_merge_needs_a_qlora_model(model_dir):
    with pytest.raises(ValueError, match="QLoRA"):
        naive.merge_and_dequantize(naive.load_4bit(model_dir, torch.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_training_step_on_gpu(model_dir, tokenizer, tmp_path):
    """fp16 compute with loss scaling: the adapters stay fp32 and finite, and the twins agree."""
    data = load_task("train").select(range(16))
    for twin in (naive, library):
        model = twin.load_4bit(model_dir, torch.float16)
        model = twin.add_lora(twin.prepare_for_kbit_training(model), 4, 8, TARGETS)
        losses = checkpoint.train_with_checkpoints(
            model,
            tokenizer,
            data,
            folder=tmp_path / twin.__name__,
            max_steps=2,
            save_every=1,
            micro_batch_size=4,
            lr=1e-3,
            mixed_precision="fp16",
            progress=False,
        )
        assert all(torch.isfinite(torch.tensor(losses)))
        assert all(p.dtype == torch.float32 for p in checkpoint.trainable_state(model).values())
