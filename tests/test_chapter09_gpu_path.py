"""Chapter 09's GPU path (``t4``, ``gpu-4gb``), run on the CPU.

No GPU here: the path runs on a small randomly initialised model of the real model's
architecture (a Qwen2 shape twin built by ``helpers.shapes``, 2 layers), loaded as the GPU
profiles load theirs (4-bit NF4 base, fp16 compute, gradient checkpointing, accumulation). The
placement of inputs on the model's device, by the course's loop and ``byod.generate``, is checked
with a faked device in ``tests/test_device_placement.py`` (the emulated device cannot host this
twin: bitsandbytes' CPU kernel and transformers' kernel hub refuse it). What it checks: the
refusal comes before anything is installed; the memory figure says "planned"; the course's loop
and TRL agree at the profile's dtype; the adapter is a peft folder that chapter 07 loads the way
it loads chapter 03's, and chapter 07's merge applies to it. What it cannot check: memory and time
on a real card.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import shapes
from helpers.data import load_jsonl
from helpers.paths import CHAPTERS_DIR, DATA_DIR, TASK_DIR
from helpers.profiles import get_profile, resolve_profile
from helpers.sft import SFTRun, byod

SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=2000, tie_word_embeddings=True,
)  # fmt: skip
LOSS_TOL = 1e-3  # the chapter's tolerance for 16-bit profiles (cell "per-step losses equal")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(shapes.QWEN25, "Small-Test", SMALL)
        return shapes.build_twin("Small-Test", tmp_path_factory.mktemp("twin") / "small")


@pytest.fixture(scope="module")
def profile(twin):
    sizes = dict(max_seq_len=96, micro_batch_size=2, grad_accum_steps=2)
    return resolve_profile("gpu-4gb", model_id=str(twin), **sizes)[0]


@pytest.fixture(scope="module")
def trained(profile, tmp_path_factory):
    """Both twins, 3 steps each on the course task, at the profile's settings."""
    from helpers.models import load_model
    from helpers.sft import library, naive

    run = SFTRun.from_profile(profile, max_steps=3)
    records = load_jsonl(TASK_DIR / "train.jsonl")
    model, tokenizer = load_model(profile)
    ours = naive.sft_train(model, tokenizer, records, run, progress=False)
    model, _ = load_model(profile)
    theirs = library.sft_train(model, tokenizer, records, run, progress=False)
    folder = tmp_path_factory.mktemp("out") / "adapter"
    theirs.model.save_pretrained(folder)
    return run, ours, theirs, tokenizer, folder


@pytest.mark.parametrize("name", ["t4-8b", "t4x2", "p100", "gpu-bf16"])
def test_other_profiles_are_refused_naming_one_that_runs(name):
    with pytest.raises(ValueError, match="PROFILE='t4'.*Nothing has been installed"):
        byod.check_profile(get_profile(name))


def test_supported_profiles_pass_and_the_plan_says_planned():
    for name in ("tiny", "t4", "gpu-4gb"):
        byod.check_profile(get_profile(name))
    for name in ("t4", "gpu-4gb"):
        plan = byod.memory_plan(get_profile(name))
        assert "planned" in plan and "not measured" in plan and "fits" not in plan


def test_the_refusal_comes_before_any_install_or_load():
    cells = json.loads((CHAPTERS_DIR / "09_your_data.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    refusal = next(i for i, s in enumerate(code) if "check_profile(profile)" in s)
    install = next(
        i for i, s in enumerate(code) if "pip" in s and "install" in s and "PACKAGES" in s
    )
    load = next(i for i, s in enumerate(code) if "load_model(profile" in s)
    assert refusal < install < load


def test_the_twins_agree_on_the_4bit_fp16_path(profile, trained):
    run, ours, theirs, _, _ = trained
    assert (
        run.mixed_precision == "fp16" and run.gradient_checkpointing and run.grad_accum_steps == 2
    )
    base = theirs.model.get_base_model()
    assert type(base.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    adapter = [p for p in theirs.model.parameters() if p.requires_grad]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)  # TRL's bf16 cast undone
    diff = max(abs(a - b) for a, b in zip(ours.losses, theirs.losses, strict=True))
    print(f"fp16, 4-bit twin: largest per-step loss difference {diff:.2e}")  # 1.2e-5 measured
    assert diff < LOSS_TOL
    assert ours.encoded == theirs.encoded


def test_packed_loss_equals_alone_in_fp16(profile, trained):
    from helpers.packing import alone_loss_sum, loss_sum
    from helpers.packing import naive as pack_naive

    run, _, theirs, tokenizer, _ = trained
    records = list(load_jsonl(DATA_DIR / "packing" / "train.jsonl").select(range(12)))
    encoded = [byod_encode for byod_encode in _encode(tokenizer, records)]
    rows = pack_naive.pack(encoded, 512)
    with torch.no_grad():
        alone = alone_loss_sum(theirs.model, encoded).item()
        packed = sum(
            loss_sum(theirs.model, pack_naive.collate([r], tokenizer.pad_token_id)).item()
            for r in rows
        )
    rel = abs(packed - alone) / alone
    print(f"fp16, 4-bit twin: packed vs alone, relative {rel:.2e}")
    assert rel < 1e-3  # the chapter's 16-bit tolerance


def _encode(tokenizer, records):
    from helpers.sft.naive import encode_records

    run = SFTRun(1, 1, 1, 1e-3, 256, 1, 1, ("q_proj",))
    return encode_records(tokenizer, records, run)


def test_the_adapter_goes_through_chapter_07s_loading_and_merge(profile, trained):
    from peft import PeftModel

    from helpers.models import load_model
    from helpers.qlora import library as qlora

    _, _, theirs, tokenizer, folder = trained
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == profile.model_id
    base, _ = load_model(profile, load_in_4bit=True)  # as chapter 07 loads chapter 03's adapter
    loaded = PeftModel.from_pretrained(base, folder).eval()
    ids = tokenizer(["Review: the kettle arrived late."], return_tensors="pt")
    with torch.no_grad():
        reference = theirs.model.eval()(**ids).logits.float()
        assert torch.equal(loaded(**ids).logits.float(), reference)
        wrong = qlora.merge_into_4bit(loaded)  # the merge chapter 07 teaches against
        gap_wrong = (wrong(**ids).logits.float() - reference).abs().max().item()
        merged = byod.merge_for_export(theirs.model)
        gap = (merged(**ids).logits.float() - reference).abs().max().item()
    kinds = {type(m).__name__ for m in merged.modules()}
    assert "Linear4bit" not in kinds and next(merged.parameters()).dtype == torch.float16
    print(f"fp16 merge gap {gap:.2e}; merged into 4-bit {gap_wrong:.2e}")
    assert gap < gap_wrong
    command = byod.export_command(profile, folder, CHAPTERS_DIR)
    assert f"-p PROFILE gpu-4gb -p ADAPTER_DIR {folder.resolve()}" in command
