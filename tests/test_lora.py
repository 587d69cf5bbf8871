"""Parity of the LoRA twins: helpers.lora.naive (plain torch) against helpers.lora.library (peft).

Both twins are built on copies of one tiny random Llama; weights are copied across under peft's
key names; inputs are fresh random draws (no fixed seed) wherever the claim must hold for any
input. On fp32 CPU the two compute the same operations in the same order, so forward outputs
and gradients are asserted bit-exact.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.lora import library, naive

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = 128


@pytest.fixture(scope="module")
def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).eval()


def _random_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, int(torch.randint(3, 12, ()))))  # (B, T), T random


def _twins(base, r=4, alpha=8, targets=ALL_LINEAR, **kwargs):
    """Naive and peft LoRA models on copies of ``base``, with random (non-zero) B copied across."""
    model_n = naive.add_lora(copy.deepcopy(base), r, alpha, targets, **kwargs)
    model_p = library.add_lora(copy.deepcopy(base), r, alpha, targets, **kwargs)
    with torch.no_grad():  # B starts at zero; make the update visible
        for param in naive.lora_state_dict(model_n).values():
            param.normal_(std=0.1)
    library.load_lora_state_dict(model_p, naive.lora_state_dict(model_n))
    return model_n, model_p


@pytest.mark.parametrize("use_rslora", [False, True])
def test_layer_matches_peft_layer_bit_exact(use_rslora):
    base = nn.Linear(48, 24)
    layer_n = naive.LoRALinear(base, r=4, alpha=16, use_rslora=use_rslora)
    layer_p = library.LoRALinear(copy.deepcopy(base), r=4, alpha=16, use_rslora=use_rslora)
    assert layer_n.scaling == layer_p.scaling["default"] == (8.0 if use_rslora else 4.0)
    assert layer_n.lora_A.weight.shape == layer_p.lora_A["default"].weight.shape == (4, 48)
    assert layer_n.lora_B.weight.shape == layer_p.lora_B["default"].weight.shape == (24, 4)
    assert not layer_n.lora_B.weight.any()  # B = 0: the wrapped layer starts as the base layer
    with torch.no_grad():
        layer_n.lora_B.weight.normal_()
        layer_p.lora_A["default"].weight.copy_(layer_n.lora_A.weight)
        layer_p.lora_B["default"].weight.copy_(layer_n.lora_B.weight)
    x = torch.randn(3, 5, 48)
    assert torch.equal(layer_n(x), layer_p(x))


def test_same_seed_gives_the_same_init_as_peft(base_model):
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    model_n = naive.add_lora(copy.deepcopy(base_model), 8, 16, ALL_LINEAR)
    torch.manual_seed(seed)
    model_p = library.add_lora(copy.deepcopy(base_model), 8, 16, ALL_LINEAR)
    state_n, state_p = naive.lora_state_dict(model_n), library.lora_state_dict(model_p)
    assert state_n.keys() == state_p.keys()
    assert all(torch.equal(state_n[k], state_p[k]) for k in state_n)
    assert naive.count_parameters(model_n) == library.count_parameters(model_p)


def test_key_names_and_trainable_parameters(base_model):
    model_n = naive.add_lora(copy.deepcopy(base_model), 4, 8, ("q_proj", "v_proj"))
    keys = list(naive.lora_state_dict(model_n))
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert len(keys) == 2 * 2 * 2  # 2 layers x 2 targets x (A, B)
    trainable = {n for n, p in model_n.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(model_n.named_parameters()) if ".lora_" in n}
    # r (in + out) per target: q is 64 -> 64, v is 64 -> 32 (one kv head of 32)
    assert naive.count_parameters(model_n)[0] == 2 * 4 * ((64 + 64) + (64 + 32))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_model_outputs_and_gradients_bit_exact(base_model, use_rslora):
    model_n, model_p = _twins(base_model, use_rslora=use_rslora)
    ids = _random_ids()
    logits_n, logits_p = model_n(input_ids=ids).logits, model_p(input_ids=ids).logits
    assert torch.equal(logits_n, logits_p)
    weights = torch.randn_like(logits_n)  # a random loss, so every gradient entry matters
    (logits_n * weights).sum().backward()
    (logits_p * weights).sum().backward()
    grads_p = {
        n.replace("base_model.model.", "").replace(".default", ""): p.grad
        for n, p in model_p.named_parameters()
        if p.requires_grad
    }
    grads_n = {n: p.grad for n, p in model_n.named_parameters() if p.requires_grad}
    assert grads_n.keys() == grads_p.keys()
    assert all(torch.equal(grads_n[k], grads_p[k]) for k in grads_n)


def test_dropout_draws_the_same_mask_as_peft(base_model):
    model_n, model_p = _twins(base_model, dropout=0.3)
    model_n.train(), model_p.train()
    ids, seed = _random_ids(), int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    logits_n = model_n(input_ids=ids).logits
    torch.manual_seed(seed)
    assert torch.equal(logits_n, model_p(input_ids=ids).logits)


def test_merge_unmerge_and_unload(base_model):
    model_n, model_p = _twins(base_model)
    ids = _random_ids()
    with torch.no_grad():
        before = model_n(input_ids=ids).logits
        naive.merge_lora(model_n), library.merge_lora(model_p)
        merged_n, merged_p = model_n(input_ids=ids).logits, model_p(input_ids=ids).logits
    # Both twins add the same fp32 delta (scaling * B @ A) to W: identical merged weights.
    assert torch.equal(merged_n, merged_p)
    # W x + s B (A x) and (W + s B A) x round differently in fp32: logits of size ~1 agree to
    # a few ulps times the depth, so 1e-4 absolute is ample and far below any real change.
    torch.testing.assert_close(merged_n, before, atol=1e-4, rtol=1e-4)
    naive.unmerge_lora(model_n)
    with torch.no_grad():
        torch.testing.assert_close(model_n(input_ids=ids).logits, before, atol=1e-4, rtol=1e-4)
    plain_n = naive.merge_and_unload(model_n)
    plain_p = library.merge_and_unload(model_p)
    assert type(plain_n.model.layers[0].mlp.down_proj) is nn.Linear
    state_p = plain_p.state_dict()
    assert all(torch.equal(v, state_p[k]) for k, v in plain_n.state_dict().items())


def test_adapter_files_load_across_twins(base_model, tmp_path):
    model_n, model_p = _twins(base_model, r=2, alpha=4)
    ids = _random_ids()
    with torch.no_grad():
        reference = model_n(input_ids=ids).logits
    naive.save_adapter(model_n, tmp_path / "naive")
    library.save_adapter(model_p, tmp_path / "peft")
    assert {p.name for p in (tmp_path / "naive").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    into_peft = library.load_adapter(copy.deepcopy(base_model), tmp_path / "naive")
    into_naive = naive.load_adapter(copy.deepcopy(base_model), tmp_path / "peft")
    with torch.no_grad():
        assert torch.equal(into_peft(input_ids=ids).logits, reference)
        assert torch.equal(into_naive(input_ids=ids).logits, reference)
    config = json.loads((tmp_path / "naive" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    assert naive.adapter_bytes(model_n) == library.adapter_bytes(model_p)


def test_bad_input_gets_clear_errors(base_model, tmp_path):
    with pytest.raises(ValueError, match="No linear layer matches"):
        naive.add_lora(copy.deepcopy(base_model), 4, 8, ("qkv",))
    with pytest.raises(ValueError, match="positive integer"):
        naive.LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(FileNotFoundError, match="adapter folder"):
        naive.load_adapter(copy.deepcopy(base_model), tmp_path)
    with pytest.raises(ValueError, match="add_lora"):
        naive.save_adapter(copy.deepcopy(base_model), tmp_path / "x")
    other = naive.add_lora(copy.deepcopy(base_model), 4, 8, ("q_proj",))
    with pytest.raises(KeyError, match="does not fit"):
        naive.load_lora_state_dict(other, {"base_model.model.nope.lora_A.weight": torch.ones(1)})
    with pytest.raises(TypeError, match="PeftModel"):
        library.merge_lora(copy.deepcopy(base_model))
