"""The LoRA twins over peft's own case families, in fp32, fp16 and bf16.

peft's tests (``tests/test_custom_models.py``) sweep layer shapes, ranks, alpha, rsLoRA,
dropout, merging and unmerging over several targets. Here the same families are swept on the
layer (cheap, so a wide grid) and on a tiny Llama (a few target sets). On the CPU both twins
run the same operations in the same order, so outputs, gradients and merged weights are
asserted bit-exact in every dtype; the only tolerance is where the math itself changes
(a merged layer against the unmerged one).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from helpers.lora import library, naive

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = 96


def _copy_adapter(layer_n: naive.LoRALinear, layer_p) -> None:
    with torch.no_grad():
        layer_n.lora_B.weight.normal_(std=0.5)  # B starts at 0: make the update visible
        layer_p.lora_A["default"].weight.copy_(layer_n.lora_A.weight)
        layer_p.lora_B["default"].weight.copy_(layer_n.lora_B.weight)


def _round_twice_merge(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The old, wrong merge: round the update to W's dtype, then round the sum again."""
    return weight + delta.to(weight.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(48, 24), (17, 33), (1, 5)], ids=str)
@pytest.mark.parametrize("r", [1, 4, 16])
@pytest.mark.parametrize(("alpha", "use_rslora"), [(1, False), (16, False), (16, True)])
def test_layer_grid_bit_exact(dtype, shape, r, alpha, use_rslora):
    in_features, out_features = shape
    base = nn.Linear(in_features, out_features).to(dtype)
    layer_n = naive.LoRALinear(copy.deepcopy(base), r, alpha, dropout=0.25, use_rslora=use_rslora)
    layer_p = library.LoRALinear(copy.deepcopy(base), r, alpha, dropout=0.25, use_rslora=use_rslora)
    # Both keep fp32 adapters over a 16-bit base (peft's autocast_adapter_dtype rule).
    assert layer_n.lora_A.weight.dtype == layer_p.lora_A["default"].weight.dtype
    assert layer_n.lora_A.weight.dtype == naive._adapter_dtype(dtype)
    assert layer_n.scaling == layer_p.scaling["default"]
    _copy_adapter(layer_n, layer_p)
    x = torch.randn(2, 3, in_features).to(dtype)  # fresh input every run

    layer_n.eval(), layer_p.eval()  # dropout off
    out_n, out_p = layer_n(x), layer_p(x)
    assert out_n.dtype == dtype and torch.equal(out_n, out_p)

    layer_n.train(), layer_p.train()  # dropout on: the same seed draws the same mask
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    out_n = layer_n(x)
    torch.manual_seed(seed)
    out_p = layer_p(x)
    assert torch.equal(out_n, out_p)
    weights = torch.randn_like(out_n)
    (out_n.float() * weights).sum().backward()
    (out_p.float() * weights).sum().backward()
    assert torch.equal(layer_n.lora_A.weight.grad, layer_p.lora_A["default"].weight.grad)
    assert torch.equal(layer_n.lora_B.weight.grad, layer_p.lora_B["default"].weight.grad)

    weight = base.weight.detach()
    layer_n.merge(), layer_p.merge()
    merged = layer_n.base_layer.weight.detach()
    assert merged.dtype == dtype and torch.equal(merged, layer_p.base_layer.weight)
    # Rounded once: W + s B A computed in fp32, then rounded to the base dtype.
    assert torch.equal(merged, (weight.float() + layer_n.delta_weight().float()).to(dtype))
    layer_n.unmerge(), layer_p.unmerge()
    assert torch.equal(layer_n.base_layer.weight, layer_p.base_layer.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_rounding_twice_is_caught(dtype):
    """The check above can fail: merging by rounding twice differs from peft in many weights."""
    base = nn.Linear(256, 128).to(dtype)
    layer_n = naive.LoRALinear(copy.deepcopy(base), 16, 32)
    layer_p = library.LoRALinear(copy.deepcopy(base), 16, 32)
    _copy_adapter(layer_n, layer_p)
    twice = _round_twice_merge(base.weight.detach(), layer_n.delta_weight())
    layer_p.merge()
    differ = (twice != layer_p.base_layer.weight).float().mean().item()
    assert differ > 0.05  # measured 30 % with this adapter (B ~ N(0, 0.5^2): update > W)


def _llama(dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("targets", "r", "alpha", "use_rslora"),
    [
        (("q_proj", "v_proj"), 2, 4, False),
        (ALL_LINEAR, 8, 16, True),
        (r".*mlp\..*_proj", 4, 4, False),
    ],
    ids=["qv", "all-linear-rslora", "regex-mlp"],
)
def test_model_grid_bit_exact(dtype, targets, r, alpha, use_rslora):
    base = _llama(dtype)
    model_n = naive.add_lora(copy.deepcopy(base), r, alpha, targets, 0.1, use_rslora)
    model_p = library.add_lora(copy.deepcopy(base), r, alpha, targets, 0.1, use_rslora)
    with torch.no_grad():
        for param in naive.lora_state_dict(model_n).values():
            param.normal_(std=0.1)
    library.load_lora_state_dict(model_p, naive.lora_state_dict(model_n))
    state_n, state_p = naive.lora_state_dict(model_n), library.lora_state_dict(model_p)
    assert state_n.keys() == state_p.keys()
    assert all(state_n[k].dtype == state_p[k].dtype == torch.float32 for k in state_n)
    ids = torch.randint(0, VOCAB, (2, 7))

    model_n.train(), model_p.train()
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    logits_n = model_n(input_ids=ids).logits
    torch.manual_seed(seed)
    logits_p = model_p(input_ids=ids).logits
    assert torch.equal(logits_n, logits_p)
    weights = torch.randn_like(logits_n, dtype=torch.float32)
    (logits_n.float() * weights).sum().backward()
    (logits_p.float() * weights).sum().backward()
    grads_p = {
        n.replace("base_model.model.", "").replace(".default", ""): p.grad
        for n, p in model_p.named_parameters()
        if p.requires_grad
    }
    grads_n = {n: p.grad for n, p in model_n.named_parameters() if p.requires_grad}
    assert grads_n.keys() == grads_p.keys()
    assert all(torch.equal(grads_n[k], grads_p[k]) for k in grads_n)

    model_n.eval(), model_p.eval()
    with torch.no_grad():
        before = model_n(input_ids=ids).logits
        naive.merge_lora(model_n), library.merge_lora(model_p)
        merged_n = model_n(input_ids=ids).logits
        assert torch.equal(merged_n, model_p(input_ids=ids).logits)
        # merged and unmerged compute (W + sBA)x and Wx + sB(Ax): equal up to rounding of the
        # base dtype (logits ~0.6; measured max differences 2e-6, 1.6e-3, 2e-2 over 5 draws)
        tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 8e-2}[dtype]
        torch.testing.assert_close(merged_n, before, atol=tol, rtol=tol)
        naive.unmerge_lora(model_n), library.unmerge_lora(model_p)
        assert torch.equal(model_n(input_ids=ids).logits, model_p(input_ids=ids).logits)
    plain_n, plain_p = naive.merge_and_unload(model_n), library.merge_and_unload(model_p)
    state_p = plain_p.state_dict()
    assert all(torch.equal(v, state_p[k]) for k, v in plain_n.state_dict().items())


def test_non_linear_targets_get_a_clear_type_error():
    llama = _llama(torch.float32)
    with pytest.raises(TypeError, match=r"'model.embed_tokens' is of type Embedding"):
        naive.add_lora(llama, 4, 8, ("embed_tokens",))
    assert not naive._lora_layers(llama)  # nothing half-done: no layer was wrapped
    with pytest.raises(TypeError, match=r"'model.layers.0.mlp' is of type LlamaMLP"):
        naive.add_lora(llama, 4, 8, ("q_proj", "mlp"))
    assert not naive._lora_layers(llama)
    for module in (nn.Conv1d(4, 4, 3), nn.Embedding(10, 4)):
        with pytest.raises(TypeError, match=f"base_layer is of type {type(module).__name__}"):
            naive.LoRALinear(module, 2, 4)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(TypeError, match="GPT-2's Conv1D"):
        naive.add_lora(copy.deepcopy(gpt2), 4, 8, ("c_attn",))
    # peft adapts these layers itself: the library twin accepts them where the naive one cannot
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        assert library.count_parameters(library.add_lora(gpt2, 4, 8, ("c_attn",)))[0] > 0
    assert library.count_parameters(library.add_lora(llama, 4, 8, ("embed_tokens",)))[0] > 0


def test_adding_lora_twice_is_refused_by_both():
    for twin in (naive, library):
        model = twin.add_lora(_llama(torch.float32), 4, 8, ("q_proj",))
        with pytest.raises(ValueError, match="already has LoRA layers"):
            twin.add_lora(model, 4, 8, ("v_proj",))
    for bad_r in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            naive.LoRALinear(nn.Linear(4, 4), r=bad_r, alpha=1)
