"""AWQ by hand against llm-compressor's AWQ (``oneshot`` with an ``AWQModifier`` and a 4-bit
``QuantizationModifier``), on one layer of a tiny random Llama and the same calibration ids:
the same grid point, the same scales, the same 4-bit weights, the same layer error; and on the
whole model, where both share one scale per norm (deployable): the same smoothed norms and
4-bit weights in the first decoder layer, the one both calibrate on the same activations."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helpers.awq import library, naive

LAYER, SMOOTH = "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "t0")))
    batches = [torch.randint(0, 64, (int(n),)).tolist() for n in torch.randint(8, 24, (12,))]
    return model, tokenizer, batches


@pytest.mark.parametrize("duo_scaling", [False, True])
def test_awq_layer_matches_llmcompressor(tiny, duo_scaling):
    model, tokenizer, batches = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mine = naive.awq_layer(model, tokenizer, batches, LAYER, SMOOTH, duo_scaling=duo_scaling)
    ref = library.awq_layer(model, tokenizer, batches, LAYER, SMOOTH, duo_scaling=duo_scaling)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy
    assert mine.ratio == ref.ratio  # the same grid point wins
    torch.testing.assert_close(ref.scales, mine.scales, rtol=1e-5, atol=0)
    close = torch.isclose(ref.weight, mine.weight, rtol=1e-5, atol=1e-7).float().mean().item()
    assert close > 0.999, close  # a weight on a rounding tie may land one step apart
    x = naive.capture_inputs(model, batches, LAYER)
    w = model.get_submodule(LAYER).weight.detach()
    e_mine, e_ref = (
        naive.layer_rel_error(mine.weight, w, x),
        naive.layer_rel_error(ref.weight, w, x),
    )
    assert abs(e_mine - e_ref) <= 1e-4 * e_ref
    assert e_mine <= naive.layer_rel_error(naive.rtn_quantize(w), w, x) + 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_awq_layer_in_16_bits_agrees_to_16_bit_rounding(tiny, dtype):
    """The GPU profiles' models are fp16 (bf16 on gpu-bf16): llm-compressor then searches in
    that dtype and ours in fp32: on this model the same grid point wins and the rest agrees to
    rounding (where two grid points nearly tie, 16-bit rounding may pick the other one)."""
    model, tokenizer, batches = tiny
    model16 = LlamaForCausalLM(model.config).eval()
    model16.load_state_dict(model.state_dict())
    model16.to(dtype)
    mine = naive.awq_layer(model16, tokenizer, batches, LAYER, SMOOTH)
    ref = library.awq_layer(model16, tokenizer, batches, LAYER, SMOOTH)
    assert mine.ratio == ref.ratio
    torch.testing.assert_close(ref.scales, mine.scales, rtol=library.scale_tolerance(dtype), atol=0)
    eps = torch.finfo(dtype).eps
    close = torch.isclose(ref.weight, mine.weight, rtol=8 * eps, atol=1e-7).float().mean().item()
    assert close > 0.98, close
    x = naive.capture_inputs(model16, batches, LAYER)
    w = model16.get_submodule(LAYER).weight.detach().float()
    e_mine, e_ref = (
        naive.layer_rel_error(mine.weight, w, x),
        naive.layer_rel_error(ref.weight, w, x),
    )
    assert abs(e_mine - e_ref) <= 1e-2 * e_ref
    assert e_mine < naive.layer_rel_error(naive.rtn_quantize(w), w, x)


def test_awq_model_is_plain_and_on_the_grid(tiny):
    model, tokenizer, batches = tiny
    quantized = library.awq_model(model, tokenizer, batches)
    assert type(quantized) is type(model)
    assert not hasattr(quantized.get_submodule(LAYER), "quantization_scheme")
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(quantized.state_dict()[norm], model.state_dict()[norm])  # smoothed
    w = quantized.get_submodule("model.layers.0.self_attn.q_proj").weight.detach()
    groups = w.reshape(w.shape[0], -1, 32)  # each row and group of 32 holds at most 16 levels
    assert max(len(torch.unique(g)) for g in groups.reshape(-1, 32)) <= 16
    torch.testing.assert_close(quantized.lm_head.weight, model.lm_head.weight)
    ids = torch.tensor([batches[0]])
    with torch.no_grad():
        gap = (quantized(ids).logits - model(ids).logits).abs().max().item()
    assert 0 < gap < 1.0


@pytest.mark.parametrize("module", [naive, library])
def test_awq_layer_bad_input(tiny, module):
    model, tokenizer, batches = tiny
    with pytest.raises(ValueError, match="not a linear layer"):
        module.awq_layer(model, tokenizer, batches, "model.layers.9.mlp.down_proj", SMOOTH)
    with pytest.raises(ValueError, match="calibration sequence"):
        module.awq_layer(model, tokenizer, [], LAYER, SMOOTH)
    if module is library:
        with pytest.raises(ValueError, match="not a module"):
            module.awq_layer(model, tokenizer, batches, LAYER, "model.layers.1.mlp.nope")


def _layer_weights(model, index):
    prefix = f"model.layers.{index}."
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_awq_model_matches_llmcompressor_on_the_first_layer(tiny):
    model, tokenizer, batches = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mine = naive.awq_model(model, tokenizer, batches)
    ref = library.awq_model(model, tokenizer, batches)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy
    ours, theirs = _layer_weights(mine, 0), _layer_weights(ref, 0)
    for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        key = "model.layers.0." + name  # the scales each norm absorbed: the same grid point
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=0)
    for key in ours:
        close = torch.isclose(ours[key], theirs[key], rtol=1e-5, atol=1e-7).float().mean().item()
        assert close > 0.999, (key, close)
    torch.testing.assert_close(mine.lm_head.weight, model.lm_head.weight)


def _norm_scale(model, quantized, index, norm):
    prefix = f"model.layers.{index}."
    return model.get_submodule(prefix + norm).weight / quantized.get_submodule(prefix + norm).weight


def test_awq_model_is_deployable_one_scale_per_norm(tiny):
    """q, k and v are plain rounding of W s with the one s their shared norm absorbed (gate
    likewise): no per-layer scale is left that the model could not hold."""
    model, tokenizer, batches = tiny
    mine = naive.awq_model(model, tokenizer, batches)
    for index in range(model.config.num_hidden_layers):
        for norm, names in (
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj",)),
        ):
            s = _norm_scale(model, mine, index, norm)
            assert not torch.allclose(s, torch.ones_like(s))  # AWQ did scale
            for name in names:
                w = model.get_submodule(f"model.layers.{index}.{name}").weight
                got = mine.get_submodule(f"model.layers.{index}.{name}").weight
                torch.testing.assert_close(got, naive.rtn_quantize(w * s), rtol=1e-5, atol=1e-6)


def test_awq_model_folding_keeps_the_function(tiny):
    """At 16 bits the rounding is nearly lossless, so what is left is the folding: the model
    computes what it computed (a scale not folded, or folded twice, moves logits by O(1))."""
    model, tokenizer, batches = tiny
    folded = naive.awq_model(model, tokenizer, batches, bits=16)
    ids = torch.tensor([batches[0]])
    with torch.no_grad():
        gap = (folded(ids).logits - model(ids).logits).abs().max().item()
    assert gap < 1e-3, gap


def test_awq_model_folds_into_v_and_its_bias_without_gqa():
    """A Qwen2 without grouped-query attention: v's outputs are o's inputs, so o gets its own
    scale folded into v's rows and bias (Qwen2's v has one); at 16 bits the function stays."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.bias.normal_(0, 0.5)
    assert [g[0].split(".")[-1] for g in naive.smoothing_groups(model, 0)] == [
        "input_layernorm", "v_proj", "post_attention_layernorm", "up_proj",
    ]  # fmt: skip
    batches = [torch.randint(0, 64, (int(n),)).tolist() for n in torch.randint(8, 24, (8,))]
    folded = naive.awq_model(model, None, batches, bits=16)
    bias = "model.layers.0.self_attn.v_proj.bias"
    assert not torch.allclose(folded.state_dict()[bias], model.state_dict()[bias])  # scaled
    ids = torch.tensor([batches[0]])
    with torch.no_grad():
        assert (folded(ids).logits - model(ids).logits).abs().max() < 1e-3
