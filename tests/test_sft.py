"""The course's loop and TRL's SFTTrainer train the same adapter: same tokens, same label mask,
same per-step losses (within 1e-5: TRL's fused log-softmax and torch's cross_entropy sum the
same fp32 terms in a different order)."""

from __future__ import annotations

import pytest
import torch

from helpers.data import IGNORE_INDEX, load_task
from helpers.models import load_model
from helpers.sft import SFTRun
from helpers.sft import library as sft_library
from helpers.sft import naive as sft_naive

LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def both_runs(tiny_profile):
    run = SFTRun.from_profile(tiny_profile, max_steps=3, micro_batch_size=4)
    data = load_task("train").select(range(64))
    results = {}
    for name, module in (("naive", sft_naive), ("library", sft_library)):
        model, tokenizer = load_model(tiny_profile)
        results[name] = module.sft_train(model, tokenizer, data, run, progress=False)
    return run, tokenizer, results


def test_same_tokens_and_completion_only_mask(both_runs):
    run, tokenizer, results = both_runs
    naive, library = results["naive"].encoded, results["library"].encoded
    assert len(naive) == run.micro_batch_size and naive == library
    for example in naive:
        labels = example["labels"]
        first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
        assert first > 0 and all(t != IGNORE_INDEX for t in labels[first:])
        assert labels[first:] == example["input_ids"][first:]  # the completion and its eos
        assert labels[-1] == tokenizer.eos_token_id


def test_per_step_losses_agree(both_runs):
    run, _, results = both_runs
    naive, library = results["naive"], results["library"]
    assert len(naive.losses) == len(library.losses) == run.max_steps
    diff = max(abs(a - b) for a, b in zip(naive.losses, library.losses, strict=True))
    assert diff < LOSS_TOLERANCE, diff
    assert library.lrs == [run.lr] * run.max_steps  # constant, as the course's loop
    torch.testing.assert_close(
        torch.tensor(naive.grad_norms), torch.tensor(library.grad_norms), rtol=1e-4, atol=1e-6
    )


def test_a_different_schedule_breaks_parity(tiny_profile):
    """The check can fail: TRL's default linear decay gives other losses after step 1."""
    run = SFTRun.from_profile(tiny_profile, max_steps=3, micro_batch_size=4)
    data = load_task("train").select(range(64))
    model, tokenizer = load_model(tiny_profile)
    naive = sft_naive.sft_train(model, tokenizer, data, run, progress=False)
    model, _ = load_model(tiny_profile)
    decayed = sft_library.sft_train(
        model, tokenizer, data, run, progress=False, lr_scheduler_type="linear"
    )
    assert abs(naive.losses[-1] - decayed.losses[-1]) > 100 * LOSS_TOLERANCE


def test_messages_records_become_prompt_completion(tiny_tokenizer):
    record = {
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "{}"},
        ]
    }
    pair = sft_library.to_prompt_completion(tiny_tokenizer, record)
    assert pair["completion"] == "{}"
    assert pair["prompt"].startswith("<|system|>") and pair["prompt"].endswith("<|assistant|>\n")
    two_answers = {"messages": record["messages"] + [{"role": "user", "content": "Again"}]}
    with pytest.raises(ValueError, match="must end with its only assistant turn"):
        sft_library.to_prompt_completion(tiny_tokenizer, two_answers)


def test_run_settings_are_checked(tiny_profile):
    with pytest.raises(ValueError, match="max_steps=0"):
        SFTRun.from_profile(tiny_profile, max_steps=0)
    with pytest.raises(ValueError, match="lr=0"):
        SFTRun.from_profile(tiny_profile, lr=0)
    with pytest.raises(TypeError, match="max_step"):
        SFTRun.from_profile(tiny_profile, max_step=3)


def test_trl_tokenizing_chat_records_also_trains_the_template_newline(tiny_profile, tmp_path):
    """What the chapter warns about: given chat messages, TRL applies the chat template itself,
    and this template's newline after the end-of-turn token is labelled too (one extra target
    token per record), so the text form is what keeps the two tokenizations equal."""
    from datasets import Dataset

    model, tokenizer = load_model(tiny_profile)
    records = list(load_task("train").select(range(4)))
    chat = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in records
        ]
    )
    run = SFTRun.from_profile(tiny_profile, max_steps=1)
    with sft_library.quiet_version_skew():
        trainer = sft_library.SFTTrainer(
            model=model,
            args=sft_library.sft_config(run, str(tmp_path)),
            train_dataset=chat,
            processing_class=tokenizer,
            peft_config=sft_library.lora_config(run),
        )
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for record, row in zip(records, trainer.train_dataset, strict=True):
        ours = sft_naive.encode_records(tokenizer, [record], run)[0]
        assert row["input_ids"] == ours["input_ids"] + newline
        assert row["labels"] == ours["labels"] + newline
