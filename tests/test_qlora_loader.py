"""The naive 4-bit loader quantizes as it loads: bit for bit what loading the whole model and
then quantizing gives, without ever holding the unquantized model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from helpers.paths import TINY_MODEL_DIR
from helpers.qlora import naive
from helpers.quantization.measure import quantizable_linears


def load_then_quantize(path, dtype=torch.float32):
    """The old way: the whole model in float, then every linear layer quantized."""
    full = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return naive.quantize_model(full, dtype).eval()


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ids = torch.randint(0, a.config.vocab_size, (2, 17))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def random_llama(path, tied=False, bias=False, shard=None):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
        attention_bias=bias,
    )
    model = LlamaForCausalLM(config)
    if bias:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_()
    model.save_pretrained(path, max_shard_size=shard or "2GB")
    return path


def test_streamed_load_equals_load_then_quantize_on_the_tiny_model():
    assert_same_model(
        naive.load_4bit(TINY_MODEL_DIR, torch.float32), load_then_quantize(TINY_MODEL_DIR)
    )


@pytest.mark.parametrize(
    "kwargs", [{"tied": True}, {"bias": True}, {"shard": "60KB"}], ids=["tied", "bias", "sharded"]
)
def test_streamed_load_parity_tied_bias_sharded(tmp_path, kwargs):
    path = random_llama(tmp_path, **kwargs)
    if "shard" in kwargs:
        assert len(list(path.glob("model-*.safetensors"))) > 1  # really several shards
    ours = naive.load_4bit(path, torch.float32)
    assert_same_model(ours, load_then_quantize(path))
    if kwargs.get("tied"):
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert not any(p.requires_grad for n, p in ours.named_parameters() if "proj" in n)


def test_no_unquantized_copy_ever_exists(monkeypatch):
    """Watch the model after every tensor placed: no quantizable layer ever holds a float
    weight, the float bytes held never exceed the parts that stay float, and neither
    from_pretrained nor a whole-file safetensors load is called."""

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed loader must not load a whole model or file")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr("safetensors.torch.load_file", refuse)
    watched, place = [], naive._place

    def watching(model, name, tensor, quantized, args):
        place(model, name, tensor, quantized, args)
        linears = quantizable_linears(model)
        float_in_linears = [
            n for n, m in linears.items() if m.weight.is_floating_point() and not m.weight.is_meta
        ]
        held = sum(
            t.numel() * t.element_size()
            for t in model.state_dict().values()
            if t.is_floating_point() and not t.is_meta
        )
        watched.append((float_in_linears, held))

    monkeypatch.setattr(naive, "_place", watching)
    model = naive.load_4bit(TINY_MODEL_DIR, torch.float32)
    kept_float = sum(
        t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point()
    )
    full = (TINY_MODEL_DIR / "model.safetensors").stat().st_size  # the fp32 model, whole
    assert len(watched) > 20
    assert all(not names for names, _ in watched)
    assert max(held for _, held in watched) <= kept_float < full


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no model.safetensors"):
        naive.load_4bit(tmp_path, torch.float32)
    path = random_llama(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, path / "model.safetensors")
    with pytest.raises(ValueError, match="not a parameter of this model"):
        naive.load_4bit(path, torch.float32)
    tensors.pop("model.norm.weight")
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match="no tensor for"):
        naive.load_4bit(path, torch.float32)
