"""Shape twins: the published configs, and a small twin written shard by shard and loaded back."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import shapes
from helpers.memory import ModelShape
from helpers.memory import naive as planner

SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=2000, tie_word_embeddings=True,
)  # fmt: skip


def _sizes(shape: ModelShape) -> dict:
    return {k: v for k, v in dataclasses.asdict(shape).items() if k not in ("name", "source")}


@pytest.mark.parametrize(
    "twin,planned",
    [
        ("Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B"),
        ("Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B"),
        ("Qwen2.5-7B-Instruct", "Qwen2.5-7B"),
    ],
)
def test_twin_configs_are_the_published_shapes(twin, planned):
    shape = ModelShape.from_config(shapes.twin_config(twin))
    assert _sizes(shape) == _sizes(planner.MODELS[planned])


def test_every_gpu_profile_has_a_twin():
    for name in ("t4", "t4-8b", "gpu-4gb", "gpu-bf16"):
        assert shapes.profile_model(name) in shapes.QWEN25
    with pytest.raises(ValueError, match="tiny"):
        shapes.profile_model("tiny")
    with pytest.raises(ValueError, match="unknown profile"):
        shapes.profile_model("a100")


def test_small_twin_round_trip(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setitem(shapes.QWEN25, "Small-Test", SMALL)
    monkeypatch.setattr(shapes, "SHARD_BYTES", 200_000)  # several shards
    out = shapes.build_twin("Small-Test", tmp_path / "twin", seed=1)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((out / f).is_file() for f in files)
    assert "lm_head.weight" not in index["weight_map"]  # tied, as in the real 0.5B and 1.5B
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (
        model.config.vocab_size == 2000
        and model.lm_head.weight is model.get_input_embeddings().weight
    )
    norm = model.model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    assert 0.015 < model.model.layers[0].mlp.up_proj.weight.float().std() < 0.025
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 2000
    ids = tokenizer("a short review")["input_ids"]
    assert ids and max(ids) < 1410  # the padding entries are never produced
    assert shapes.is_twin(str(out)) and "meaningless" in shapes.twin_notice(str(out))
    assert shapes.twin_notice("data/tiny-llama") is None
    assert not (tmp_path / "twin.partial").exists()


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(shapes.QWEN25, "Small-Test", SMALL)

    def broken(out, vocab_size):
        raise OSError("disk full")

    monkeypatch.setattr(shapes, "write_tokenizer", broken)
    with pytest.raises(OSError, match="disk full"):
        shapes.build_twin("Small-Test", tmp_path / "twin")
    assert not (tmp_path / "twin").exists() and not (tmp_path / "twin.partial").exists()
    with pytest.raises(ValueError, match="no published config"):
        shapes.twin_config("Qwen2.5-72B")
