"""Bad inputs get the same clear error from both twins of a technique (naive and library).

Each case here gave a silent wrong answer (a NaN, a truncated example, a score of 0.00, an
empty tensor) or a crash that did not say what was wrong before the checks in
``helpers/checks.py`` and the packages' ``check_*`` functions; each test runs one case against
both twins.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers.awq import library as awq_library
from helpers.awq import naive as awq_naive
from helpers.evaluation import library as eval_library
from helpers.evaluation import naive as eval_naive
from helpers.ggufq import export
from helpers.ggufq import library as gguf_library
from helpers.ggufq import naive as gguf_naive
from helpers.gptq import library as gptq_library
from helpers.gptq import naive as gptq_naive
from helpers.harness import library as harness_library
from helpers.harness import naive as harness_naive
from helpers.lora import library as lora_library
from helpers.lora import naive as lora_naive
from helpers.packing import library as packing_library
from helpers.packing import naive as packing_naive

GGUF = pytest.mark.parametrize("gguf", [gguf_naive, gguf_library], ids=["naive", "library"])
GPTQ = pytest.mark.parametrize("gptq", [gptq_naive, gptq_library], ids=["naive", "library"])
PACKING = pytest.mark.parametrize(
    "packing", [packing_naive, packing_library], ids=["naive", "library"]
)
LORA = pytest.mark.parametrize("lora", [lora_naive, lora_library], ids=["naive", "library"])
EVAL = pytest.mark.parametrize("ev", [eval_naive, eval_library], ids=["naive", "library"])
HARNESS = pytest.mark.parametrize(
    "harness", [harness_naive, harness_library], ids=["naive", "library"]
)
AWQ = pytest.mark.parametrize("awq", [awq_naive, awq_library], ids=["naive", "library"])


@pytest.fixture(scope="module")
def tiny(tiny_profile):
    from helpers.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_profile, load_in_4bit=False)


# --- GGUF: a NaN or inf weight, and a scale that fp16 cannot hold -------------------------


@GGUF
@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_k"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_gguf_refuses_nan_and_inf(gguf, kind, bad):
    weight = torch.randn(2, 256)
    weight[1, 77] = bad  # Q4_K used to store a NaN as code 0, Q8_0 and Q4_0 as a NaN block
    with pytest.raises(ValueError, match=r"weight holds 1 NaN or inf value.*index \(1, 77\)"):
        getattr(gguf, f"quantize_{kind}")(weight)


@GGUF
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_gguf_refuses_a_scale_past_fp16(gguf, kind):
    # 1e7 / 127 = 78,740 and 1e7 / 8 = 1.25e6: both past fp16's 65,504 (stored as inf)
    weight = torch.randn(2, 64)
    weight[1, 40] = 1e7
    with pytest.raises(ValueError, match=r"block 3 .*larger than fp16's 65504"):
        getattr(gguf, f"quantize_{kind}")(weight)


@GGUF
def test_gguf_large_finite_values_that_fit_round_trip(gguf):
    # Q8_0 holds up to 127 * 65504 = 8.3e6; Q4_K's 6-bit steps keep 1e7 in range: handled
    weight = torch.randn(2, 256)
    weight[0, 3] = 8e6
    back = gguf.dequantize_q8_0(gguf.quantize_q8_0(weight))
    assert torch.isfinite(back).all() and abs(back[0, 3].item() - 8e6) <= 8e6 / 127
    weight[0, 3] = 1e7
    back = gguf.dequantize_q4_k(gguf.quantize_q4_k(weight))
    assert torch.isfinite(back).all() and abs(back[0, 3].item() - 1e7) / 1e7 < 0.05
    weight[0, 3] = 1e9  # a super-block scale past fp16: refused, not written as inf
    with pytest.raises(ValueError, match="larger than fp16's 65504"):
        gguf.quantize_q4_k(weight)


@GGUF
@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_write_gguf_refuses_a_nan_tensor_and_writes_nothing(gguf, qtype, tmp_path):
    from helpers.paths import TINY_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL_DIR, folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name][5, 9] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=rf"tensor '{name}' as {qtype}: weight holds 1 NaN"):
        export.write_gguf(folder, out / "m.gguf", qtype, quantizers=gguf)
    assert list(out.iterdir()) == []  # neither the file nor its .partial


# --- GPTQ and AWQ: calibration data, bits, the library's fallback -------------------------


def _layer(seed=0, out_features=8, in_features=64, n=96):
    torch.manual_seed(seed)
    return torch.randn(out_features, in_features) * 0.05, torch.randn(n, in_features)


def test_hessian_refuses_empty_and_nan_calibration():
    _, x = _layer()
    with pytest.raises(ValueError, match="calibration rows"):
        gptq_naive.hessian(x[:0])  # 0 / 0: an all-NaN Hessian before
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="inputs holds 1 NaN"):
        gptq_naive.hessian(x)


@GPTQ
@pytest.mark.parametrize("bits", [0, 1, 9])
def test_gptq_refuses_bits_outside_2_to_8(gptq, bits):
    # 9 bits saturated at 255 in the uint8 codes; 0 bits divided by 2^0 - 1 = 0 (NaN weights)
    w, x = _layer()
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        gptq.gptq_quantize(w, gptq_naive.hessian(x), bits=bits)


@GPTQ
def test_rtn_takes_2_to_16_bits_and_refuses_the_rest(gptq):
    # round-to-nearest returns floats (no uint8 codes), so 9 to 16 bits are allowed: at 16 the
    # rounding is nearly lossless, at 2 it is coarse; 0, 1 and 17 are refused
    w, _ = _layer()
    assert (gptq.rtn_quantize(w, 16) - w).abs().max() < 1e-3 * w.abs().max()
    assert (gptq.rtn_quantize(w, 2) - w).abs().max() > 1e-2 * w.abs().max()
    for bits in (0, 1, 17):
        with pytest.raises(ValueError, match="bits must be an integer from 2 to 16"):
            gptq.rtn_quantize(w, bits)


@GPTQ
@pytest.mark.parametrize("what", ["weight", "h"])
def test_gptq_refuses_nan(gptq, what):
    w, x = _layer()
    h = gptq_naive.hessian(x)
    {"weight": w, "h": h}[what][1, 1] = float("inf")
    with pytest.raises(ValueError, match=f"{what} holds 1 NaN or inf"):
        gptq.gptq_quantize(w, h)


@GPTQ
def test_gptq_refuses_a_hessian_it_cannot_invert(gptq):
    # llm-compressor falls back to round-to-nearest here and returns a flag the course dropped
    w, _ = _layer()
    h = -torch.eye(w.shape[1])
    with pytest.raises(ValueError, match="not positive definite.*round-to-nearest"):
        gptq.gptq_quantize(w, h)


def test_awq_quantize_refuses_nan_and_empty_calibration_and_bad_bits():
    w, x = _layer()
    with pytest.raises(ValueError, match="calibration rows"):
        awq_naive.awq_quantize(w, x[:0])
    with pytest.raises(ValueError, match="bits must be"):
        awq_naive.awq_quantize(w, x, bits=17)
    x[0, 0] = float("nan")  # used to give a list of NaN errors and pick the first grid point
    with pytest.raises(ValueError, match="inputs holds 1 NaN"):
        awq_naive.awq_quantize(w, x)


@AWQ
def test_awq_layer_checks_before_it_runs(awq, tiny):
    model, tokenizer = tiny
    layer, smooth = "model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"
    batches = [tokenizer("a short calibration text")["input_ids"]]
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 16"):
        awq.awq_layer(model, tokenizer, batches, layer, smooth, bits=17)
    weight = dict(model.named_modules())[layer].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        with pytest.raises(ValueError, match="weight holds 1 NaN"):
            awq.awq_layer(model, tokenizer, batches, layer, smooth)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


# --- packing: the two twins accept and refuse the same examples ---------------------------


@PACKING
def test_pack_refuses_an_example_longer_than_pack_len(packing):
    # TRL's best-fit packing cut such an example silently while the naive twin refused it
    encoded = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
        {"input_ids": [4] * 9, "labels": [4] * 9},
    ]
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than pack_len=8"):
        packing.pack(encoded, 8)


@PACKING
def test_pack_refuses_empty_and_mismatched_examples(packing):
    # an empty example used to make a row's labels one longer than its input_ids
    with pytest.raises(ValueError, match="example 1 has no tokens"):
        packing.pack([{"input_ids": [1], "labels": [1]}, {"input_ids": [], "labels": []}], 8)
    with pytest.raises(ValueError, match="example 0 has 2 input_ids but 3 labels"):
        packing.pack([{"input_ids": [1, 2], "labels": [1, 2, 3]}], 8)
    with pytest.raises(ValueError, match="pack_len must be a positive integer"):
        packing.pack([{"input_ids": [1], "labels": [1]}], 0)
    with pytest.raises(ValueError, match="at least one packed row"):
        packing.collate([], pad_token_id=0)


@PACKING
def test_pack_keeps_labels_as_long_as_inputs(packing):
    encoded = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (3, 5, 1, 7)]
    for row in packing.pack(encoded, 8):
        assert len(row["labels"]) == len(row["input_ids"]) == sum(row["seq_lengths"])


# --- evaluation and the harness -----------------------------------------------------------


@EVAL
def test_token_ids_past_the_vocabulary_are_refused(ev, tiny):
    model, _ = tiny
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.tensor([1, 2, vocab, 3])  # an IndexError deep in the embedding before
    with pytest.raises(ValueError, match=rf"holds the id {vocab}, outside .*0..{vocab - 1}"):
        ev.perplexity(model, ids, max_length=4)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        ev.score_choices(model, [1, 2], [[3], [vocab + 5]])


@HARNESS
def test_empty_multiple_choice_file_names_the_file(harness, tiny, tmp_path):
    # one twin divided by zero, the other raised a bare StopIteration
    model, tokenizer = tiny
    path = tmp_path / "mc.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=rf"{path}: the file holds no records"):
        harness.evaluate_multiple_choice(model, tokenizer, path)


def test_harness_task_naming_a_missing_field_is_an_error(tmp_path, monkeypatch):
    # the harness reads an unknown name as a literal target ("answr"), scoring 0.00
    from helpers.harness.library import GENERATION_TASK, MC_TASK, TASKS_DIR

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks)
    for name in (MC_TASK, GENERATION_TASK):
        yaml_file = tasks / f"{name}.yaml"
        yaml_file.write_text(
            yaml_file.read_text().replace("doc_to_target: answer", "doc_to_target: answr")
        )
    monkeypatch.setattr(harness_library, "TASKS_DIR", tasks)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "2 + 2?", "choices": ["3", "4"], "answer": 1}) + "\n")
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"prompt": "2 + 2?", "completion": "4"}) + "\n")
    for task, path in ((MC_TASK, mc), (GENERATION_TASK, gen)):
        with pytest.raises(ValueError, match=r"tasks/course_\w+\.yaml: doc_to_target: 'answr'"):
            harness_library.task_config(task, path)


def test_harness_task_config_still_accepts_the_course_tasks(tmp_path):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "2 + 2?", "choices": ["3", "4"], "answer": 1}) + "\n")
    config = harness_library.task_config(harness_library.MC_TASK, mc)
    assert config["doc_to_target"] == "answer"


# --- LoRA: alpha, and unmerge of a layer that is not merged -------------------------------


@LORA
@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 0.0, -8.0])
def test_lora_refuses_a_non_finite_or_non_positive_alpha(lora, alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number above 0"):
        lora.LoRALinear(nn.Linear(8, 8), r=2, alpha=alpha)


@LORA
def test_unmerge_of_an_unmerged_layer_warns_in_both_twins(lora):
    layer = lora.LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    before = layer.base_layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="Already unmerged"):
        layer.unmerge()
    assert torch.equal(layer.base_layer.weight, before)


def test_naive_merge_twice_warns_and_adds_once():
    layer = lora_naive.LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    nn.init.normal_(layer.lora_B.weight)
    layer.merge()
    once = layer.base_layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="Already merged"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, once)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.unmerge()  # a merged layer unmerges without a word


# --- distributed --------------------------------------------------------------------------


def test_world_size_zero_is_refused(tiny_profile):
    from helpers.distributed import library, naive
    from helpers.distributed.job import task_job

    for twin in (naive, library):
        with pytest.raises(ValueError, match="world_size must be a positive integer"):
            twin.shard(list(range(8)), 0, 0)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        task_job(tiny_profile, world_size=0, grad_accum_steps=1, steps=1)  # divided by 0


@EVAL
def test_greedy_generate_refuses_ids_past_the_vocabulary(ev, tiny):
    model, tokenizer = tiny
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.tensor([[1, 2, vocab + 1]])
    with pytest.raises(ValueError, match="input_ids holds the id"):
        ev.greedy_generate(model, ids, torch.ones_like(ids), 2, tokenizer.eos_token_id, 0)


@pytest.mark.parametrize("twin", ["naive", "library"])
def test_qlora_quantize_model_refuses_a_nan_weight_and_replaces_nothing(twin, tiny_profile):
    import importlib

    from helpers.models import load_model

    qlora = importlib.import_module(f"helpers.qlora.{twin}")
    model, _ = load_model(tiny_profile, load_in_4bit=False)
    name = "model.layers.1.self_attn.v_proj"
    with torch.no_grad():
        model.get_submodule(name).weight[2, 3] = float("nan")  # bitsandbytes stored a NaN block
    with pytest.raises(ValueError, match=rf"{name}\.weight holds 1 NaN"):
        qlora.quantize_model(model, torch.float32)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))


@pytest.mark.parametrize("twin", ["naive", "library"])
@pytest.mark.parametrize("card_gib", [float("nan"), float("inf"), -1.0, 0])
def test_fits_refuses_a_card_size_that_is_not_a_positive_number(twin, card_gib):
    # the library twin crashed in int() on a NaN and judged a negative card "does NOT fit"
    import importlib

    from helpers.memory import RunSpec

    memory = importlib.import_module(f"helpers.memory.{twin}")
    shape = importlib.import_module("helpers.memory.naive").MODELS["Qwen2.5-1.5B"]
    with pytest.raises(ValueError, match="card_gib must be a positive number of GiB"):
        memory.fits(shape, RunSpec("lora", 1, 16, "float32", lora_r=4), card_gib)
