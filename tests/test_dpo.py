"""DPO by hand (``helpers.dpo.naive``) against TRL's ``DPOTrainer`` (``helpers.dpo.library``).

Both twins get the same tiny Llama with the same LoRA adapter, its B matrices drawn at random so
that the policy differs from the reference (with B = 0 every reward is 0 and the loss is log 2
whatever the code does). They must agree on the batch (exactly), the loss, the per-pair rewards,
the logged means and the LoRA gradients; and four training steps (the course's AdamW loop
against ``DPOTrainer.train``, from a fresh adapter) log the same loss, accuracy and margin.

Tolerances, measured on a 2-core CPU (torch 2.13, trl 1.16), 5 random adapters and batches, on
the course's previous tiny model (4 blocks, until 2026-12-06; not re-measured on the 2-block
one, on which every tolerance below still holds: these tests pass):
- fp32: loss within 1e-6, rewards and means within 7e-6, LoRA gradients within 2e-6 (TRL's fused
  LM head sums the vocabulary in tiles, the naive twin in one log_softmax): 1e-5 holds.
- bf16 weights (fp32 adapter): loss, rewards and means as in fp32; the gradients differ by up to
  1.3 % (norm of the difference over the norm of TRL's): the naive twin's autograd rounds the
  LM head's backward products to bf16, TRL's kernel accumulates them in fp32. Tolerance 5 %.
- fp16 weights (a T4 profile's dtype; 3 draws, fp16 matmuls are slow on a CPU): the same, with
  gradients up to 0.3 % apart. Tolerance 2 %.
- a 4-bit (NF4) base, fp32 adapter: TRL's trainer casts a quantized model's adapter to bf16
  when it is built; with that cast the gradients differed by up to 3.9 % (fp32 compute) and
  7.1 % (fp16 compute) and the rewards by 2.5e-2. The library twin keeps the adapter as given
  (``helpers.dpo.adapter_kept``); then, 5 draws in fp32 compute: loss within 2.4e-7, rewards
  within 2.4e-6, gradients within 1.1e-5 (tolerance 5e-5: bitsandbytes' 4-bit backward adds
  rounding the fp32 model does not have); 2 draws in fp16 compute: values as in fp32,
  gradients within 0.9 % (the fp16 tolerance, 2 %).
Leaving the reference terms out of the loss moves the loss by 0.08 to 0.48 and the gradients by
20 % to 100 % on the same draws, so both checks reject it (``test_..._rejects_a_loss_without_...``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile

import pytest
import torch
import torch.nn.functional as F

from helpers.data import load_jsonl, load_task
from helpers.dpo import library as dpo_library
from helpers.dpo import naive as dpo_naive
from helpers.dpo.pairs import flipped_label_pairs, on_policy_pairs, to_trl_record
from helpers.lora import library as lora_library
from helpers.lora import naive as lora_naive
from helpers.lora.library import add_lora
from helpers.models import load_model
from helpers.task import FIELDS, generate_answers

BETA = 0.5
# Loss, rewards and logged means (absolute and relative); LoRA gradients (relative to the norm
# of TRL's gradient). Measured gaps in the module's docstring.
VALUE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 2e-2}
# An NF4 base (fp32 adapter), by compute dtype: measured gaps in the module's docstring.
GRAD_TOL_4BIT = {torch.float32: 5e-5, torch.float16: GRAD_TOL[torch.float16]}
TWINS = {"naive": dpo_naive, "library": dpo_library}


def lora_model(profile, dtype=torch.float32, seed=0, b_std=0.1):
    """The tiny model in ``dtype`` (None: as loaded) with a seeded LoRA adapter whose B is drawn, not zero."""
    model, tokenizer = load_model(profile)
    if dtype is not None:  # None: as loaded (a 4-bit model cannot be cast)
        model.to(dtype)
    torch.manual_seed(seed)
    peft_model = add_lora(model, profile.lora_r, profile.lora_alpha, profile.target_modules)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    return peft_model, tokenizer


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_values_agree(mine, theirs, tol: float) -> None:
    """Loss, per-pair rewards and logged means of two DPOOutputs agree within ``tol``."""
    torch.testing.assert_close(mine.loss.detach(), theirs.loss.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(mine.chosen_rewards, theirs.chosen_rewards, atol=tol, rtol=tol)
    torch.testing.assert_close(mine.rejected_rewards, theirs.rejected_rewards, atol=tol, rtol=tol)
    assert mine.metrics.keys() == theirs.metrics.keys()
    for name in mine.metrics:
        assert math.isclose(mine.metrics[name], theirs.metrics[name], abs_tol=tol, rel_tol=tol), (
            name
        )


def assert_grads_agree(mine: dict, theirs: dict, tol: float) -> None:
    """Every LoRA gradient present in both, the stacked difference within ``tol`` of TRL's norm."""
    assert mine.keys() == theirs.keys() and len(mine) > 0
    assert all(bool(g.abs().sum() > 0) for g in theirs.values())  # every adapter matrix learns
    a = torch.cat([mine[n].flatten() for n in sorted(mine)])
    b = torch.cat([theirs[n].flatten() for n in sorted(theirs)])
    gap = float((a - b).norm() / b.norm())
    assert gap <= tol, f"LoRA gradients differ by {gap:.2e} of their norm (tolerance {tol:.0e})"


@pytest.fixture(scope="module")
def pairs():
    return flipped_label_pairs(load_task("valid").select(range(4)), seed=1)


@pytest.fixture(
    scope="module",
    params=[torch.float32, torch.bfloat16, torch.float16],
    ids=["fp32", "bf16", "fp16"],
)
def both(request, tiny_profile, pairs):
    """Both twins' outputs and LoRA gradients on one batch, and the naive twin's wrong loss."""
    dtype = request.param
    model, tokenizer = lora_model(tiny_profile, dtype)
    twin_model = copy.deepcopy(model)
    mine = dpo_naive.dpo_loss(model, tokenizer, pairs, beta=BETA)
    mine.loss.backward()
    mine_grads = lora_grads(model)
    model.zero_grad()
    # The deliberate mistake: the reference's log-probs left out of the loss.
    chosen, rejected = dpo_naive.completion_logps(model, mine.batch)
    no_ref_loss = -F.logsigmoid(BETA * (chosen - rejected)).mean()
    no_ref_loss.backward()
    no_ref_grads = lora_grads(model)
    theirs = dpo_library.dpo_loss(twin_model, tokenizer, pairs, beta=BETA)
    theirs.loss.backward()
    return dtype, mine, mine_grads, theirs, lora_grads(twin_model), no_ref_loss, no_ref_grads


def test_the_batch_is_token_for_token_the_same(both):
    _, mine, _, theirs, *_ = both
    assert mine.batch.keys() == theirs.batch.keys()
    for name in mine.batch:
        assert torch.equal(mine.batch[name], theirs.batch[name]), name


def test_loss_rewards_and_gradients_agree(both):
    dtype, mine, mine_grads, theirs, their_grads, *_ = both
    assert_values_agree(mine, theirs, VALUE_TOL[dtype])
    assert_grads_agree(mine_grads, their_grads, GRAD_TOL[dtype])


def test_the_adapter_moved_the_policy(both):
    """Not a vacuous match: the rewards are far from 0 and the loss far from log 2."""
    _, mine, *_ = both
    margins = mine.chosen_rewards - mine.rejected_rewards
    assert float(margins.abs().max()) > 0.1
    assert abs(float(mine.loss.detach()) - math.log(2)) > 1e-3
    wins = (mine.chosen_rewards > mine.rejected_rewards).float().mean()
    assert mine.metrics["rewards/accuracies"] == pytest.approx(float(wins))


def test_the_check_rejects_a_loss_without_reference_terms(both):
    dtype, mine, _, theirs, their_grads, no_ref_loss, no_ref_grads = both
    wrong = dpo_naive.DPOOutput(
        no_ref_loss, mine.chosen_rewards, mine.rejected_rewards, mine.metrics, mine.batch
    )
    with pytest.raises(AssertionError):
        assert_values_agree(wrong, theirs, VALUE_TOL[dtype])
    with pytest.raises(AssertionError, match="LoRA gradients differ"):
        assert_grads_agree(no_ref_grads, their_grads, GRAD_TOL[dtype])


def test_completion_logps_agree_and_skip_the_prompt(tiny_profile, pairs):
    model, tokenizer = lora_model(tiny_profile)
    batch = dpo_naive.dpo_loss(model, tokenizer, pairs[:2]).batch
    with torch.no_grad():
        mine = dpo_naive.completion_logps(model, batch)
        theirs = dpo_library.completion_logps(model, batch)
        patched = model.get_base_model().forward
        dpo_library.completion_logps(model, batch)  # TRL's fused head is added once only
        assert model.get_base_model().forward == patched
        # the prompt is given, not predicted: changing a prompt token's mask changes the sum
        whole = dict(batch, completion_mask=batch["attention_mask"])
        with_prompt = dpo_naive.completion_logps(model, whole)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert bool((with_prompt[0] < mine[0] - 1.0).all())


def test_a_fresh_adapter_is_the_reference(tiny_profile, pairs):
    """B = 0: policy and reference are one model, so every reward is 0 and the loss log 2."""
    model, tokenizer = lora_model(tiny_profile, b_std=0.0)
    out = dpo_naive.dpo_loss(model, tokenizer, pairs[:2])
    assert torch.equal(out.chosen_rewards, torch.zeros(2))
    assert float(out.loss) == pytest.approx(math.log(2), abs=1e-7)


def own_lora_twin(profile, peft_model):
    """The course's own LoRA (helpers.lora.naive) on a fresh model, with ``peft_model``'s
    adapter copied in (both keep peft's layout)."""
    model, _ = load_model(profile)
    model.to(peft_model.get_base_model().dtype)
    lora_naive.add_lora(model, profile.lora_r, profile.lora_alpha, profile.target_modules)
    lora_naive.load_lora_state_dict(model, lora_library.lora_state_dict(peft_model))
    return model


def same_names(grads: dict) -> dict:
    """Gradients under one naming: peft's ``base_model.model.`` prefix and ``.default`` removed."""
    return {
        n.removeprefix("base_model.model.").replace(".default", ""): g for n, g in grads.items()
    }


def test_the_course_s_own_lora_gives_the_same_loss(tiny_profile, pairs):
    """The naive twin on helpers.lora.naive layers (reference: scaling set to 0) matches TRL on
    the same adapter held by peft."""
    peft_model, tokenizer = lora_model(tiny_profile)
    own = own_lora_twin(tiny_profile, peft_model)
    mine = dpo_naive.dpo_loss(own, tokenizer, pairs, beta=BETA)
    mine.loss.backward()
    theirs = dpo_library.dpo_loss(peft_model, tokenizer, pairs, beta=BETA)
    theirs.loss.backward()
    assert_values_agree(mine, theirs, 1e-5)
    assert_grads_agree(same_names(lora_grads(own)), same_names(lora_grads(peft_model)), 1e-5)
    assert all(layer.scaling > 0 for layer in own.modules() if hasattr(layer, "lora_A"))
    lora_naive.merge_lora(own)
    with pytest.raises(ValueError, match="a merged LoRA layer cannot be switched off"):
        dpo_naive.dpo_loss(own, tokenizer, pairs[:1])
    with pytest.raises(TypeError, match="model must be a peft model:"):
        dpo_library.dpo_loss(own, tokenizer, pairs[:1])  # TRL needs peft


@pytest.mark.parametrize("compute_dtype", ["float32", "float16"])
def test_a_4bit_base_agrees_and_keeps_its_fp32_adapter(tiny_profile, pairs, compute_dtype):
    """On an NF4 base TRL's trainer would cast the adapter to bf16; the library twin keeps it,
    so both twins train the same fp32 adapter and agree as on a float base."""
    profile = dataclasses.replace(tiny_profile, load_in_4bit=True, compute_dtype=compute_dtype)
    model, tokenizer = lora_model(profile, dtype=None)
    twin_model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in twin_model.named_parameters() if p.requires_grad}
    mine = dpo_naive.dpo_loss(model, tokenizer, pairs, beta=BETA)
    mine.loss.backward()
    theirs = dpo_library.dpo_loss(twin_model, tokenizer, pairs, beta=BETA)
    theirs.loss.backward()
    after = {n: p.detach() for n, p in twin_model.named_parameters() if p.requires_grad}
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert not changed, f"the library twin changed the adapter (dtype or values): {changed[:2]}"
    assert_values_agree(mine, theirs, VALUE_TOL[torch.float32])
    grad_tol = GRAD_TOL_4BIT[profile.torch_dtype]
    assert_grads_agree(lora_grads(model), lora_grads(twin_model), grad_tol)


def test_library_keeps_the_adapter_under_test_as_is(tiny_profile, pairs, tmp_path, monkeypatch):
    """TRL adds a frozen "ref" copy of an existing adapter; the twin removes it again, and the
    trainer's output folder too."""
    model, tokenizer = lora_model(tiny_profile)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dpo_library.dpo_loss(model, tokenizer, pairs[:2])
    assert list(tmp_path.iterdir()) == []
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_conversational_pairs_agree(tiny_profile, pairs):
    model, tokenizer = lora_model(tiny_profile)
    turns = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs[:2]
    ]
    mine = dpo_naive.dpo_loss(model, tokenizer, turns, beta=BETA)
    theirs = dpo_library.dpo_loss(copy.deepcopy(model), tokenizer, turns, beta=BETA)
    for name in mine.batch:
        assert torch.equal(mine.batch[name], theirs.batch[name]), name
    assert_values_agree(mine, theirs, 1e-5)
    # the template closes an assistant turn with eos: the answer's tokens end with it (and "\n")
    first = mine.batch["input_ids"][0][mine.batch["completion_mask"][0].bool()].tolist()
    assert tokenizer.eos_token_id in first[-2:]


def train_both(profile, pairs, naive_lr=1e-3, library_lr=1e-3):
    model, tokenizer = lora_model(profile, b_std=0.0)  # a fresh adapter, as training starts
    twin_model = copy.deepcopy(model)
    settings = dict(max_steps=4, micro_batch_size=4, beta=BETA)
    mine = dpo_naive.dpo_train(model, tokenizer, pairs, lr=naive_lr, **settings)
    theirs = dpo_library.dpo_train(twin_model, tokenizer, pairs, lr=library_lr, **settings)
    return mine, theirs


def test_training_steps_agree(tiny_profile):
    """Four steps over 10 pairs (the third batch holds 2, the fourth starts a new pass): the
    same loss, accuracy and margin at every step (measured: within 2e-7)."""
    pairs = flipped_label_pairs(load_task("train").select(range(10)), seed=0)
    mine, theirs = train_both(tiny_profile, pairs)
    assert len(mine.losses) == len(theirs.losses) == 4
    assert mine.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: policy = reference
    torch.testing.assert_close(
        torch.tensor(mine.losses), torch.tensor(theirs.losses), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(mine.margins), torch.tensor(theirs.margins), atol=1e-5, rtol=1e-5
    )
    assert mine.accuracies == theirs.accuracies
    assert mine.losses[-1] < mine.losses[0] - 1e-2 and mine.margins[-1] > 0  # it learns


def test_training_check_fails_on_another_learning_rate(tiny_profile):
    pairs = flipped_label_pairs(load_task("train").select(range(10)), seed=0)
    mine, theirs = train_both(tiny_profile, pairs, library_lr=2e-3)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            torch.tensor(mine.losses), torch.tensor(theirs.losses), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"micro_batch_size": 2.0}, "micro_batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be a finite number above 0"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm must be a finite number above 0"),
    ],
)
def test_bad_training_settings_are_named(tiny_profile, pairs, twin, setting, words):
    model, tokenizer = lora_model(tiny_profile)
    settings = {"max_steps": 1, "micro_batch_size": 1, "lr": 1e-3, **setting}
    with pytest.raises(ValueError, match=words):
        TWINS[twin].dpo_train(model, tokenizer, pairs, **settings)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"beta": 0.0}, ValueError, "beta must be a finite number above 0"),
        ({"beta": float("nan")}, ValueError, "beta must be"),
        ({"beta": True}, ValueError, "beta must be"),
        ({"records": []}, ValueError, "records must be a non-empty list"),
        ({"records": [{"prompt": "x", "chosen": "y"}]}, ValueError, "missing field 'rejected'"),
        (
            {"records": [{"prompt": "x", "chosen": "y", "rejected": " "}]},
            ValueError,
            "'rejected' is empty",
        ),
        (
            {"records": [{"prompt": "x", "chosen": [], "rejected": "z"}]},
            ValueError,
            "all strings or all",
        ),
    ],
)
def test_bad_arguments_are_named(tiny_profile, pairs, twin, change, error, words):
    model, tokenizer = lora_model(tiny_profile)
    kwargs = {"records": pairs[:1], "beta": 0.1, **change}
    with pytest.raises(error, match=words):
        TWINS[twin].dpo_loss(model, tokenizer, **kwargs)


@pytest.mark.parametrize("twin", TWINS)
def test_a_model_without_adapter_and_a_bad_batch_are_refused(tiny_profile, pairs, twin):
    model, tokenizer = load_model(tiny_profile)
    with pytest.raises(TypeError, match="model must be a peft model"):
        TWINS[twin].dpo_loss(model, tokenizer, pairs[:1])
    peft_model, _ = lora_model(tiny_profile)
    batch = dpo_naive.dpo_loss(peft_model, tokenizer, pairs[:1]).batch
    odd = {name: rows[:1] for name, rows in batch.items()}
    with pytest.raises(ValueError, match="with N even"):
        TWINS[twin].completion_logps(peft_model, odd)
    alien = dict(batch, input_ids=batch["input_ids"] + 10_000)
    with pytest.raises(ValueError, match=r"batch\['input_ids'\] holds the id"):
        TWINS[twin].completion_logps(peft_model, alien)


# --- Preference pairs from the task -----------------------------------------------------------


def test_flipped_pairs_change_exactly_one_field(pairs):
    records = load_task("valid").select(range(40))
    built = flipped_label_pairs(records, seed=3)
    assert len(built) == 40
    flipped = set()
    for record, pair in zip(records, built, strict=True):
        assert pair["prompt"] == record["prompt"] and pair["chosen"] == record["completion"]
        chosen, rejected = json.loads(pair["chosen"]), json.loads(pair["rejected"])
        assert list(rejected) == list(FIELDS)
        changed = [f for f in FIELDS if chosen[f] != rejected[f]]
        assert len(changed) == 1
        flipped.add(changed[0])
    assert flipped == set(FIELDS)  # each field gets flipped somewhere in 40 draws
    assert flipped_label_pairs(records, seed=3) == built
    assert flipped_label_pairs(records, seed=4) != built


def test_flipped_pairs_refuse_what_cannot_be_flipped():
    same = [
        {"prompt": "p", "completion": '{"category": "a", "sentiment": "b", "urgency": "c"}'}
    ] * 3
    with pytest.raises(ValueError, match="take one label only"):
        flipped_label_pairs(same)
    with pytest.raises(ValueError, match="dataset record 0: the completion"):
        flipped_label_pairs([{"prompt": "p", "completion": "not json"}])
    with pytest.raises(ValueError, match="seed must be"):
        flipped_label_pairs(load_task("valid").select(range(4)), seed=-1)


def test_on_policy_pairs_keep_only_the_wrong_answers():
    records = load_task("valid").select(range(4))
    gold = records["completion"]
    wrong = json.dumps({**json.loads(gold[1]), "urgency": "x"})
    answers = [gold[0], f"  {wrong} ", "   ", "I do not know"]
    built = on_policy_pairs(records, answers)
    assert [p["rejected"] for p in built] == [wrong, "I do not know"]
    assert [p["chosen"] for p in built] == [gold[1], gold[3]]
    assert [p["prompt"] for p in built] == [records[1]["prompt"], records[3]["prompt"]]
    with pytest.raises(ValueError, match=r"answers must hold one answer per record \(4\), got 3"):
        on_policy_pairs(records, answers[:3])
    with pytest.raises(ValueError, match=r"answers\[2\] must be a string"):
        on_policy_pairs(records, [gold[0], gold[1], None, gold[3]])


def test_on_policy_pairs_from_generated_answers_train(tiny_profile, tmp_path):
    """The tiny model's own wrong answers become pairs, a file, and a DPO batch."""
    model, tokenizer = lora_model(tiny_profile, b_std=0.0)
    records = load_task("valid").select(range(6))
    answers = generate_answers(
        model, tokenizer, records["prompt"], max_new_tokens=30, progress=False
    )
    built = on_policy_pairs(records, answers)
    assert 0 < len(built) <= len(records)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in built))
    loaded = load_jsonl(path)
    assert loaded.column_names == ["prompt", "chosen", "rejected"]
    out = dpo_naive.dpo_loss(model, tokenizer, list(loaded))
    assert out.loss.requires_grad and torch.isfinite(out.loss)


def test_to_trl_record_wraps_a_text_prompt_in_the_chat_template(tiny_tokenizer, pairs):
    record = to_trl_record(tiny_tokenizer, pairs[0])
    assert record["prompt"].startswith("<|user|>\n") and record["prompt"].endswith(
        "<|assistant|>\n"
    )
    assert record["chosen"] == pairs[0]["chosen"]


# --- load_jsonl on preference files -----------------------------------------------------------

TEXT = {"prompt": "Tag this.", "chosen": '{"category": "billing"}', "rejected": '{"category": "x"}'}
TURNS = {
    "prompt": [
        {"role": "system", "content": "JSON only."},
        {"role": "user", "content": "Tag this."},
    ],
    "chosen": [{"role": "assistant", "content": "{}"}],
    "rejected": [{"role": "assistant", "content": "no"}],
}


def write_lines(tmp_path, lines):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("good", [TEXT, TURNS], ids=["text", "conversational"])
def test_preference_files_are_read(tmp_path, good):
    data = load_jsonl(write_lines(tmp_path, [json.dumps(good), "", json.dumps(good)]))
    assert len(data) == 2 and data.column_names == ["prompt", "chosen", "rejected"]
    assert data[0] == good


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"prompt": "p", "chosen": "c"}, "missing field 'rejected'"),
        ({"chosen": "c", "rejected": "r"}, "missing field 'prompt'"),
        ({**TEXT, "chosen": "  "}, "field 'chosen' is empty"),
        ({**TEXT, "rejected": 3}, "all strings or all lists of turns"),
        ({**TURNS, "chosen": []}, "field 'chosen' must be a non-empty list of turns"),
        ({**TURNS, "chosen": [{"role": "user", "content": "x"}]}, "chosen[0]: role 'user' is not"),
        ({**TURNS, "rejected": [{"role": "assistant"}]}, "rejected[0] must be an object with"),
        ({**TURNS, "rejected": [{"role": "assistant", "content": ""}]}, "'content' must be a non-"),
        ({**TURNS, "prompt": TURNS["chosen"]}, "the prompt's last turn must be a user turn"),
    ],
)
def test_bad_preference_line_names_file_line_and_field(tmp_path, bad, expected):
    good = TURNS if isinstance(bad.get("chosen"), list) else TEXT
    path = write_lines(tmp_path, [json.dumps(good), json.dumps(bad)])
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert f"{path}, line 2" in message and expected in message, message


def test_mixed_formats_are_refused_with_both_lines(tmp_path):
    task_line = json.dumps({"prompt": "p", "completion": "c"})
    path = write_lines(tmp_path, [json.dumps(TEXT), task_line])
    with pytest.raises(
        ValueError, match=r"line 2: a prompt/completion record, but line 1 is preference"
    ):
        load_jsonl(path)
    path = write_lines(tmp_path, [json.dumps(TEXT), json.dumps(TURNS)])
    with pytest.raises(
        ValueError, match=r"line 2: field 'prompt' is a list of object, but on line 1"
    ):
        load_jsonl(path)
