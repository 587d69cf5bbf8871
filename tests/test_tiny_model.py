"""The shipped tiny model: reproducible from its seed with the course's helpers, and measured for
what quantization and each decoder block cost it. Whatever the model, removing its first block
and rounding to int2 must cost it beyond the interval. A model fit to judge quantization also
has every block matter clearly, and ranks fp32 ~ int8 < NF4 < int3 < int2 by the KL divergence
from the full-precision model (``sensitivity.window_kl``: the cost of lost precision), each step
beyond its paired 95 % interval; the shipped model does both (tested). By perplexity the two fine
steps (int8 -> NF4, NF4 -> int3) are not resolved: perplexity also carries a first-order term of
random sign that is as large as the cost of lost precision on this model (data/MODEL_CARD.md).
That test is a strict expected failure, so a model that passes it turns it red until its mark is
removed. Chapter 01's top-token check must pass NF4 and fail int3 on the shipped model, so that
its verdict on 4 bits could have come out the other way.

``COURSE_SLOW=1`` also re-runs ``data/make_tiny_model.py`` whole (about 5 minutes on two
threads) and compares the weights.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re

import nbformat
import pytest
import torch

from helpers.paths import CHAPTERS_DIR, DATA_DIR
from helpers.quantization import sensitivity

MODEL_DIR = DATA_DIR / "tiny-llama"
LOG = json.loads((MODEL_DIR / "training_log.json").read_text())
REPLAY_STEPS = 51  # the log keeps every 50th loss: steps 0 and 50 (about 40 s on one thread)


def make_tiny_model():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", DATA_DIR / "make_tiny_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return make_tiny_model()


@pytest.fixture(scope="module")
def report():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    return sensitivity.sensitivity_report(model, tokenizer)


def test_the_log_holds_the_run_the_script_makes_by_default(script):
    assert LOG["settings"] == script.SETTINGS
    assert LOG["seed"] == script.SEED
    assert len(LOG["losses_every_50"]) == script.SETTINGS["steps"] // 50 + 1


def test_the_tokenizer_is_the_one_the_script_learns(script):
    tokenizer = script.make_tokenizer()
    shipped = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    learnt = json.loads(tokenizer.backend_tokenizer.to_str())
    assert learnt["model"]["vocab"] == shipped["model"]["vocab"]
    assert learnt["model"]["merges"] == shipped["model"]["merges"]


def test_the_first_steps_replay_from_the_seed(script):
    """The start of the shipped run, re-run from the seed with the same helpers, gives the
    logged losses of steps 0 and 50 (to 1e-3: another CPU may sum in another order)."""
    _tok, _model, history, _run = script.train(
        script.SETTINGS, max_steps=REPLAY_STEPS, progress=False
    )
    replayed = history["loss"][::50]
    assert replayed == pytest.approx(LOG["losses_every_50"][:2], abs=1e-3)
    assert replayed[1] < replayed[0] - 5  # it learns: a replay of nothing would prove nothing
    assert history["lr"][-1] < script.SETTINGS["lr"]  # the full run's schedule, not a 51-step one


@pytest.mark.skipif(os.environ.get("COURSE_SLOW") != "1", reason="COURSE_SLOW=1: ~5 min")
def test_the_whole_run_reproduces_the_shipped_model(script):
    """Not bit for bit (float sums in another order drift over 1,500 steps), but the same loss
    curve and held-out perplexity."""
    _tok, _model, history, _run = script.train(script.SETTINGS, progress=False)
    every_50 = history["loss"][::50] + history["loss"][-1:]
    assert every_50 == pytest.approx(LOG["losses_every_50"], abs=0.02)
    assert history["val_ppl"][-1] == pytest.approx(LOG["heldout_ppl"], abs=0.005)


def test_the_measurement_sees_damage(report):
    """Whatever the model, removing the first decoder block or rounding every linear weight to
    three levels must cost it, beyond the interval, and int8 must cost almost nothing."""
    assert report["layer_removed"][0]["low"] > 0.1
    assert report["steps"]["int3->int2"]["low"] > 0
    int8 = report["steps"]["fp32->int8"]
    assert -1e-3 < int8["low"] and int8["high"] < 1e-3, int8
    shares = [report["changed_choices"][f]["share"] for f in ("int8", "nf4", "int3", "int2")]
    assert shares == sorted(shares) and shares[0] < 0.005 < shares[-1]


def test_kl_ranks_every_format_each_step_beyond_noise(report):
    """fp32 < int8 < NF4 < int3 < int2 by the KL divergence from the full-precision model's
    next-token distributions: each step's paired 95 % interval lies above 0, and int8's whole
    KL is tiny."""
    for step, d in report["kl_steps"].items():
        assert d["low"] > 0, (step, d)
    assert report["kl"]["int8"]["high"] < 1e-4, report["kl"]["int8"]


CLEARLY = 0.1  # nats of mean NLL per window: a block whose removal costs less barely matters


def test_every_decoder_block_matters(report):
    """Making any one decoder block the identity raises held-out perplexity clearly: the whole
    95 % interval of the rise lies above CLEARLY nats."""
    for i, d in enumerate(report["layer_removed"]):
        assert d["low"] > CLEARLY, f"block {i}: {d}"


@pytest.mark.xfail(
    strict=True,
    reason="on the shipped model the intervals of the int8 -> NF4 and NF4 -> int3 steps hold 0 "
    "(data/MODEL_CARD.md); the KL divergence, which carries no first-order term, ranks every "
    "step (test above)",
)
def test_perplexity_ranks_the_formats_each_step_beyond_noise(report):
    """fp32 ~ int8 < NF4 < int3 < int2: each step's paired 95 % interval lies above 0."""
    for step in ("int8->nf4", "nf4->int3", "int3->int2"):
        assert report["steps"][step]["low"] > 0, (step, report["steps"][step])


def test_the_model_card_quotes_this_measurement(report):
    """The log (and the card written from it) holds what the model measures today."""
    assert LOG["sensitivity"]["perplexity"] == pytest.approx(report["perplexity"], rel=1e-3)
    card = (DATA_DIR / "MODEL_CARD.md").read_text()
    assert f"| int2 | {LOG['sensitivity']['perplexity']['int2']} |" in card
    for name, kl in report["kl"].items():
        assert LOG["sensitivity"]["kl"][name]["mean"] == pytest.approx(kl["mean"], rel=1e-2), name


def test_paired_difference_sees_a_shift_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(200, generator=gen, dtype=torch.float64)
    noise = 1e-3 * torch.randn(200, generator=gen, dtype=torch.float64)
    shifted = sensitivity.paired_difference(base + 0.01 + noise, base)
    assert shifted["low"] > 0
    same = sensitivity.paired_difference(base + noise, base)
    assert same["low"] < 0 < same["high"]
    with pytest.raises(ValueError, match="2\\+ windows"):
        sensitivity.paired_difference(base[:1], base[:1])


def test_window_kl_is_zero_for_no_change_and_the_direct_kl_otherwise():
    """On a small random Llama: an identity round trip gives KL 0 exactly; a coarse one gives,
    window by window, the KL computed directly from the two models' full logits."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (4 * 32,))
    base = sensitivity.final_hidden_states(model, ids, seq_len=32)
    same = sensitivity.window_kl(model, base, ids, lambda w: w, seq_len=32)
    assert same.shape == (4,) and torch.equal(same, torch.zeros(4, dtype=torch.float64))
    int2 = sensitivity.FORMATS["int2"]
    kl = sensitivity.window_kl(model, base, ids, int2, seq_len=32)
    coarse = copy.deepcopy(model)
    with torch.no_grad():
        for module in coarse.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(int2(module.weight))
        windows = ids.view(4, 32)
        p = torch.log_softmax(model(windows).logits.double(), -1)
        q = torch.log_softmax(coarse(windows).logits.double(), -1)
    direct = (p.exp() * (p - q)).sum(-1).mean(-1)  # (W,)
    assert (kl > 0).all()
    torch.testing.assert_close(kl, direct, rtol=1e-4, atol=1e-7)


def test_window_kl_feeds_the_head_in_its_own_dtype():
    """The stored states are fp32; a half-precision model's head gets them in its dtype (a
    GPU profile's fp16 head would otherwise refuse fp32 input)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 97, (2 * 32,))
    base = sensitivity.final_hidden_states(model, ids, seq_len=32)
    assert base.dtype == torch.float32
    kl = sensitivity.window_kl(model, base, ids, sensitivity.FORMATS["int2"], seq_len=32)
    assert kl.shape == (2,) and torch.isfinite(kl).all() and (kl > 0).all()


def test_chapter_01s_top_token_check_passes_nf4_and_fails_int3(report):
    """Chapter 01's claim that 4-bit weights barely change what the model predicts has a check
    that can fail on the shipped model: the top next token changes at under BOUNDS["top token"]
    of positions for NF4 (its whole Wilson interval below the bound) and at more for int3 (its
    whole interval above). Measured here on every held-out position; the chapter reads the first
    8,192 and prints its own verdicts."""
    source = "\n".join(
        c.source for c in nbformat.read(CHAPTERS_DIR / "01_quantization.ipynb", 4).cells
    )
    bound = ast.literal_eval(re.search(r"^BOUNDS = (\{.*?\})", source, re.M)[1])["top token"]
    nf4, int3 = report["changed_choices"]["nf4"], report["changed_choices"]["int3"]
    assert nf4["high"] < bound < int3["low"], (bound, nf4, int3)
