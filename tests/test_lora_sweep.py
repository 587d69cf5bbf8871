"""Chapter 02's sweep module: the scale rules, the first-update measurement, adapters taken off
a base model without a trace, the sweep runner, and the results file the chapter plots."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.lora import naive, sweep

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture()
def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_scaling_rules_agree_at_the_reference_rank():
    for rule in sweep.SCALINGS:
        assert sweep.scaling(rule, 8, 8, 16) == pytest.approx(2.0)
    assert sweep.scaling("alpha/r fixed", 32, 8, 16) == pytest.approx(2.0)
    assert sweep.scaling("alpha fixed", 32, 8, 16) == pytest.approx(0.5)
    assert sweep.scaling("rsLoRA", 32, 8, 16) == pytest.approx(1.0)  # 2 * sqrt(8 / 32)


@pytest.mark.parametrize("bad", [("alpha", 8), ("rsLoRA", 0), ("rsLoRA", 2.5)])
def test_scaling_refuses_bad_input(bad):
    rule, r = bad
    with pytest.raises(ValueError):
        sweep.scaling(rule, r, 8, 16)


def test_first_update_grows_with_r_unless_rslora():
    def ratio(rule):
        sizes = [sweep.first_update_size(r, sweep.scaling(rule, r, 8, 16)) for r in (1, 64)]
        return sizes[1] / sizes[0]

    assert ratio("alpha/r fixed") > 4  # about sqrt(64) = 8
    assert ratio("alpha fixed") < 0.25  # about 1 / 8
    assert 0.5 < ratio("rsLoRA") < 2  # about constant


def test_remove_lora_restores_the_base_model(small_llama):
    ids = torch.randint(0, 96, (2, 10))
    before = {k: v.clone() for k, v in small_llama.state_dict().items()}
    with torch.no_grad():
        reference = small_llama(input_ids=ids).logits
    naive.add_lora(small_llama, 4, 8, ALL_LINEAR)
    with torch.no_grad():
        for tensor in naive.lora_state_dict(small_llama).values():
            tensor.normal_()
        naive.merge_lora(small_llama)  # merged: remove_lora must unmerge first
    sweep.remove_lora(small_llama)
    assert not any(isinstance(m, naive.LoRALinear) for m in small_llama.modules())
    assert not hasattr(small_llama, "lora_config")
    assert set(small_llama.state_dict()) == set(before)
    with torch.no_grad():
        torch.testing.assert_close(small_llama(input_ids=ids).logits, reference)
    # an unmerged adapter leaves the weights bit-identical
    naive.add_lora(small_llama, 4, 8, ALL_LINEAR)
    sweep.remove_lora(small_llama)
    after = small_llama.state_dict()
    w = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(after[w], before[w], atol=1e-5, rtol=0)


def _fake_sweep(tmp_path, **drop):
    runs = [{"r": r, "targets": list(ALL_LINEAR), "alpha": 1.0, "seed": s, "trainable": 10 * r,
             "scores": [{"steps": 10, "exact_match": 0.1 * s}, {"steps": 20, "exact_match": 0.2}]}
            for r in (1, 2) for s in (0, 1, 2)]  # fmt: skip
    data = {"runs": runs, "steps": [10, 20], "seeds": [0, 1, 2], "eval_examples": 5, "r_ref": 2,
            "command": "python -m helpers.lora.sweep"}  # fmt: skip
    for key in drop:
        data.pop(key)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(data))
    return path


def test_summarize_gives_each_seed_and_the_spread(tmp_path):
    data = sweep.load_sweep(_fake_sweep(tmp_path))
    points = sweep.summarize(data, 10)
    assert [p["r"] for p in points] == [1, 2]
    assert points[0]["seeds"] == [0, 1, 2]
    assert points[0]["values"] == pytest.approx([0.0, 0.1, 0.2])
    assert (points[0]["low"], points[0]["high"]) == pytest.approx((0.0, 0.2))
    assert points[0]["mean"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="steps"):
        sweep.summarize(data, 15)


def test_load_sweep_names_the_file_at_fault(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m helpers.lora.sweep"):
        sweep.load_sweep(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="'runs'"):
        sweep.load_sweep(_fake_sweep(tmp_path, runs=None))


def test_main_refuses_steps_that_do_not_increase(tmp_path):
    with pytest.raises(SystemExit):
        sweep.main(["--steps", "20", "10", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_run_point_scores_and_leaves_the_base_unchanged(tiny_profile, tiny_tokenizer):
    from helpers.data import load_task
    from helpers.models import load_model

    model, _ = load_model(tiny_profile, load_in_4bit=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_set, valid = load_task("train"), load_task("valid").select(range(2))
    kwargs = {"micro_batch_size": 2, "lr": 1e-3, "max_seq_len": 64}
    result = sweep.run_point(model, tiny_tokenizer, train_set, valid, r=2, targets=("q_proj",),
                             alpha=4.0, seed=0, steps=(1, 2), train_kwargs=kwargs)  # fmt: skip
    assert [s["steps"] for s in result["scores"]] == [1, 2]
    assert all(0.0 <= s["exact_match"] <= 1.0 for s in result["scores"])
    assert result["trainable"] == 2 * 2 * (256 + 256)  # A (r, in) + B (out, r), 2 layers
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, nn.Module) and isinstance(m, naive.LoRALinear)
                   for m in model.modules())  # fmt: skip


def test_committed_sweep_file_covers_every_point_and_seed():
    data = sweep.load_sweep()
    configs = sweep.sweep_configs(data["r_ref"], data["alpha_ref"], ALL_LINEAR)
    for config in configs:
        runs = [run for run in data["runs"]
                if run["r"] == config["r"] and tuple(run["targets"]) == config["targets"]]  # fmt: skip
        assert sorted(run["seed"] for run in runs) == sorted(data["seeds"])
        assert all(run["alpha"] == pytest.approx(config["alpha"]) for run in runs)
        assert all([s["steps"] for s in run["scores"]] == data["steps"] for run in runs)
    assert len(data["seeds"]) >= 2


def test_run_sweep_reports_each_run_as_it_ends(tmp_path):
    saved = []
    data = sweep.run_sweep("tiny", [0], (1,), 2, ranks=(1,), on_run=saved.append)
    assert [len(d["runs"]) for d in saved] == [1, 2]  # rank 1, then r_ref on attention only
    assert saved[-1]["runs"] == data["runs"]
    assert [run["r"] for run in data["runs"]] == [1, data["r_ref"]]
    assert all(run["seed"] == 0 for run in data["runs"])
