"""A Llama by hand computes what transformers' LlamaForCausalLM computes, weight for weight.

Both twins get one state dict and fresh random token ids; each fp32 logit agrees within
1e-5 + 1e-5 x its size (the two differ only in the order of floating-point sums, the library
running PyTorch's fused attention kernel). Checked on the course's tiny model (4 query heads
sharing 2 key/value heads, separate head) and on random configs with grouped-query attention,
tied and untied heads, the weights copied in both directions.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from helpers.llama import library, naive
from helpers.paths import TINY_MODEL_DIR

TOL = {"rtol": 1e-5, "atol": 1e-5}


def small_config(**overrides) -> LlamaConfig:
    """6 query heads in 2 groups of 3 (GQA); init std 0.1 so that attention is far from uniform
    and a mistake in it shows in the logits."""
    settings = dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**(settings | overrides))


def both_logits(naive_model, library_model, input_ids):
    with torch.no_grad():
        return (
            naive.llama_logits(naive_model, input_ids),
            library.llama_logits(library_model, input_ids),
        )


def test_same_logits_on_the_tiny_model():
    lib = library.load_llama(TINY_MODEL_DIR)
    nai = naive.load_llama(TINY_MODEL_DIR)
    assert lib.config.num_key_value_heads < lib.config.num_attention_heads
    input_ids = torch.randint(lib.config.vocab_size, (3, 100), generator=torch.Generator())
    got, expected = both_logits(nai, lib, input_ids)
    assert got.shape == (3, 100, lib.config.vocab_size)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_same_logits_on_a_random_gqa_config(tied):
    config = small_config(tie_word_embeddings=tied)
    torch.manual_seed(1)
    lib = library.build_llama(config)  # library -> naive
    nai = naive.build_llama(config, lib.state_dict())
    input_ids = torch.randint(config.vocab_size, (2, 37))
    torch.testing.assert_close(*both_logits(nai, lib, input_ids), **TOL)
    nai = naive.build_llama(config)  # naive -> library: the same names both ways
    lib = library.build_llama(config, nai.state_dict())
    torch.testing.assert_close(*both_logits(nai, lib, input_ids), **TOL)


def test_a_dropped_causal_mask_is_caught(monkeypatch):
    """Without the mask, position t reads the tokens after it: every position but the last
    changes, far beyond the tolerance. With one layer the last position sees the whole row
    either way, and agrees (with two, it reads keys that saw the future in layer one)."""
    config = small_config(num_hidden_layers=1)
    torch.manual_seed(2)
    lib = library.build_llama(config)
    input_ids = torch.randint(config.vocab_size, (2, 20))
    monkeypatch.setattr(naive, "causal_mask", lambda seq_len: torch.zeros(seq_len, seq_len))
    got, expected = both_logits(naive.build_llama(config, lib.state_dict()), lib, input_ids)
    torch.testing.assert_close(got[:, -1], expected[:, -1], **TOL)
    assert not torch.allclose(got[:, :-1], expected[:, :-1], **TOL)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_bad_input_names_the_setting(twin, tmp_path):
    with pytest.raises(ValueError, match="config.num_attention_heads .6. must be a multiple"):
        twin.build_llama(small_config(num_key_value_heads=4))
    with pytest.raises(ValueError, match="config.hidden_act must be 'silu'"):
        twin.build_llama(small_config(hidden_act="gelu"))
    with pytest.raises(TypeError, match="config must be a transformers LlamaConfig"):
        twin.build_llama({"hidden_size": 48})
    model = twin.build_llama(small_config())
    with pytest.raises(ValueError, match="state_dict does not fit config"):
        twin.build_llama(small_config(hidden_size=96), model.state_dict())
    with pytest.raises(ValueError, match="input_ids holds the id 101"):
        twin.llama_logits(model, torch.tensor([[1, 101]]))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        twin.llama_logits(model, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, tokens\)"):
        twin.llama_logits(model, torch.tensor([1, 2]))
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        twin.load_llama(tmp_path)
