"""Every helper that feeds a model builds its inputs on the model's device, not the CPU.

On 2026-12-04 chapter 00 failed on every CUDA machine: the doctor's checks tokenized on the CPU
and fed a model on the GPU. These tests run each helper entry point with the tiny model on an
emulated second device (``device_emulation``: real CPU data, reported as another device, and any
op mixing it with a CPU tensor raises as CUDA does), so the bug shows without a GPU.
"""

from __future__ import annotations

import pytest
import torch
from device_emulation import DeviceMismatch, emulated_device, on_device

from helpers import doctor, packing, prompting, task, train
from helpers.accumulation import library as acc_library
from helpers.accumulation import naive as acc_naive
from helpers.awq import naive as awq_naive
from helpers.data import Collator, load_task
from helpers.evaluation import library as eval_library
from helpers.evaluation import naive as eval_naive
from helpers.harness import naive as harness_naive
from helpers.models import load_model
from helpers.paths import DATA_DIR
from helpers.qlora import checkpoint
from helpers.quantization import measure
from helpers.sft import byod

EVALUATION = [pytest.param(eval_naive, id="naive"), pytest.param(eval_library, id="library")]
# The library twin hands the model to lm_eval's HFLM, which takes the device from the model
# itself (lm_eval/models/huggingface.py: ``self._device = self._model.device``) and refuses
# the emulated device's name ("meta"); only the naive twin builds inputs in the course's code.
HARNESS = [pytest.param(harness_naive, id="naive")]


@pytest.fixture(scope="module")
def tiny(tiny_profile):
    return load_model(tiny_profile, load_in_4bit=False)


@pytest.fixture(scope="module")
def records():
    return load_task("train").select(range(4))


def _encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """What a learner passes: the tokenizer's tensors, on the CPU."""
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_the_emulated_device_catches_a_cpu_input(tiny):
    model, tokenizer = tiny
    batch = _encode(tokenizer, ["The parcel arrived."])
    with emulated_device(model), pytest.raises(DeviceMismatch, match="embedding"):
        model(**batch)
    with emulated_device(model):
        moved = batch.to(next(model.parameters()).device)
        assert on_device(model(**moved).logits)


def test_the_emulated_device_behaves_like_a_gpu_and_goes_away():
    layer = torch.nn.Linear(4, 3)
    with emulated_device(layer):
        device = next(layer.parameters()).device
        assert device.type == "meta" and torch.zeros(2, device=device).device == device
        with pytest.raises(DeviceMismatch, match="cat"):
            torch.cat([layer.weight, torch.zeros(1, 4)])
        out = layer(torch.ones(2, 4).to(device)) * torch.tensor(2.0)  # a 0-dim CPU scalar is fine
        assert on_device(out) and not on_device(out.cpu())
        assert isinstance(out.sum().item(), float)  # real data behind the emulated device
    assert layer.weight.device.type == "cpu" and not on_device(layer.weight)
    assert "device" not in vars(torch.Tensor)


@pytest.mark.parametrize("index", range(3), ids=["forward_backward", "four_bit", "lora_step"])
def test_doctor_self_test_feeds_the_models_device(index, monkeypatch):
    import helpers.models

    with emulated_device() as device:

        def load_on_device(profile, **kwargs):
            model, tokenizer = load_model(profile, **kwargs)
            return device.put(model), tokenizer

        monkeypatch.setattr(helpers.models, "load_model", load_on_device)
        name, step = doctor._self_test_steps()[index]
        step()


@pytest.mark.parametrize("twin", EVALUATION)
def test_perplexity_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    ids = tokenizer("The parcel arrived two days early. " * 8, return_tensors="pt")["input_ids"]
    with emulated_device(model):
        twin.perplexity(model, ids[0], max_length=16, stride=8)


@pytest.mark.parametrize("twin", EVALUATION)
def test_sequence_nll_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    batch = _encode(tokenizer, ["I returned the kettle.", "Two days."])
    with emulated_device(model):
        twin.sequence_nll(model, batch["input_ids"], batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("twin", EVALUATION)
def test_greedy_generate_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    batch = _encode(tokenizer, ["I returned the kettle.", "Two days."])
    with emulated_device(model):
        twin.greedy_generate(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=4,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


@pytest.mark.parametrize("twin", EVALUATION)
def test_score_choices_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    context = tokenizer("The kettle was", add_special_tokens=False)["input_ids"]
    choices = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" broken", " late")]
    with emulated_device(model):
        twin.score_choices(model, context, choices)


def test_prompting_exact_match_feeds_the_models_device(tiny, records):
    model, tokenizer = tiny
    with emulated_device(model):
        prompting.prompting_exact_match(
            model, tokenizer, records, shots=1, shot_pool=records, max_new_tokens=4, progress=False
        )


def test_task_evaluate_feeds_the_models_device(tiny, records):
    model, tokenizer = tiny
    with emulated_device(model):
        task.evaluate(model, tokenizer, records, n=2, max_new_tokens=4)


def test_byod_generate_feeds_the_models_device(tiny):
    model, tokenizer = tiny
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "{}"}]}
    ]
    with emulated_device(model):
        byod.generate(model, tokenizer, records, max_new_tokens=4)


def test_train_and_validation_loss_feed_the_models_device(tiny_profile, records, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedModel

    # model.train() asks the kernels package for the device's kernels, which refuses "meta".
    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", lambda self, *a, **k: None)

    model, tokenizer = load_model(tiny_profile, load_in_4bit=False)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with emulated_device(model):
        train.train(
            model,
            tokenizer,
            records,
            max_steps=2,
            micro_batch_size=2,
            lr=1e-3,
            progress=False,
            eval_dataset=records,
            eval_every=1,
        )
        train.validation_loss(model, tokenizer, records, micro_batch_size=2)


def test_token_loss_sum_feeds_the_models_device(tiny, records):
    model, tokenizer = tiny
    batch = Collator(tokenizer, 64)([records[0], records[1]])
    with emulated_device(model):
        train.token_loss_sum(model, batch)


def test_quantization_perplexity_feeds_the_models_device(tiny):
    model, tokenizer = tiny
    ids = tokenizer("The parcel arrived two days early. " * 8, return_tensors="pt")["input_ids"]
    with emulated_device(model):
        measure.perplexity(model, ids[0], max_seq_len=16, batch_size=2)


@pytest.mark.parametrize("twin", HARNESS)
def test_harness_multiple_choice_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    with emulated_device(model):
        twin.evaluate_multiple_choice(
            model, tokenizer, DATA_DIR / "task" / "mc_test.jsonl", limit=2
        )


@pytest.mark.parametrize("twin", HARNESS)
def test_harness_generation_feeds_the_models_device(twin, tiny):
    model, tokenizer = tiny
    with emulated_device(model):
        twin.evaluate_generation(
            model, tokenizer, DATA_DIR / "task" / "test.jsonl", limit=2, max_new_tokens=4
        )


def _lora(tiny_profile):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(tiny_profile, load_in_4bit=False)
    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    ), tokenizer


def test_packing_loss_sums_feed_the_models_device(tiny):
    model, tokenizer = tiny
    ids = tokenizer("I returned the kettle.", add_special_tokens=False)["input_ids"]
    encoded = [{"input_ids": ids, "labels": ids}, {"input_ids": ids[:3], "labels": ids[:3]}]
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids])}  # (1, T) on the CPU
    with emulated_device(model):
        packing.alone_loss_sum(model, encoded)
        packing.loss_sum(model, batch)


@pytest.mark.parametrize(
    "twin", [pytest.param(acc_naive, id="naive"), pytest.param(acc_library, id="library")]
)
def test_accumulation_feeds_the_models_device(twin, tiny_profile, records, monkeypatch):
    """Chapter 04 moves its micro-batches to the model; the helpers' own tensors follow them."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", lambda self, *a, **k: None)
    model, tokenizer = _lora(tiny_profile)
    collate = Collator(tokenizer, 64)
    window = [collate([records[0], records[1]]), collate([records[2], records[3]])]
    with emulated_device(model):
        device = next(model.parameters()).device
        window = [{k: v.to(device) for k, v in b.items()} for b in window]
        twin.full_batch_gradients(model, window[0])
        twin.window_gradients(model, window)
        twin.mean_of_means_gradients(model, window)
        twin.train(model, [window], lr=1e-3)


def test_train_with_checkpoints_feeds_the_models_device(
    tiny_profile, records, tmp_path, monkeypatch
):
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", lambda self, *a, **k: None)
    model, tokenizer = _lora(tiny_profile)
    with emulated_device(model):
        checkpoint.train_with_checkpoints(
            model,
            tokenizer,
            records,
            folder=tmp_path,
            max_steps=2,
            save_every=1,
            micro_batch_size=2,
            lr=1e-3,
            progress=False,
            say=lambda text: None,
        )


def test_awq_capture_inputs_feeds_the_models_device(tiny):
    model, tokenizer = tiny
    ids = tokenizer("I returned the kettle.", add_special_tokens=False)["input_ids"]
    with emulated_device(model):
        awq_naive.capture_inputs(model, [ids], "model.layers.0.self_attn.q_proj")
