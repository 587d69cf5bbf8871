"""Profile values are checked: a wrong type or value names the profile and the field."""

from __future__ import annotations

import pytest
import torch

from helpers.profiles import PROFILES, get_profile


@pytest.mark.parametrize(
    ("override", "error", "expected"),
    [
        ({"max_steps": -5}, ValueError, "max_steps=-5 is too small: it must be at least 1"),
        ({"max_steps": 0}, ValueError, "max_steps=0 is too small"),
        ({"max_steps": 2.5}, TypeError, "max_steps=2.5 must be a whole number"),
        ({"max_steps": "10"}, TypeError, "max_steps='10' must be a whole number"),
        ({"micro_batch_size": True}, TypeError, "micro_batch_size=True must be a whole number"),
        ({"lr": "fast"}, TypeError, "lr='fast' must be a number"),
        ({"lr": -1e-4}, ValueError, "lr=-0.0001 is not a finite number above 0"),
        ({"lr": float("nan")}, ValueError, "lr=nan is not a finite number above 0"),
        ({"lora_alpha": 0}, ValueError, "lora_alpha=0 is not a finite number"),
        ({"compute_dtype": "fp16"}, ValueError, "compute_dtype='fp16' is not one of"),
        ({"load_in_4bit": "yes"}, TypeError, "load_in_4bit='yes' must be a bool"),
        ({"target_modules": ()}, ValueError, "target_modules=() is empty"),
        ({"target_modules": "q_proj"}, TypeError, "must be a tuple of module names"),
        ({"max_seq_len": 1}, ValueError, "max_seq_len=1 is too small: it must be at least 2"),
        ({"min_gpu_memory_gb": -1}, ValueError, "min_gpu_memory_gb=-1 is below 0"),
        ({"model_id": ""}, ValueError, "model_id='' is empty"),
    ],
)
def test_bad_values_name_profile_and_field(override, error, expected):
    with pytest.raises(error) as err:
        get_profile("tiny", **override)
    assert str(err.value).startswith("profile 'tiny': ") and expected in str(err.value)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match=r"Unknown profile field\(s\) \['max_step'\]"):
        get_profile("tiny", max_step=10)


def test_good_overrides_and_every_shipped_profile_pass():
    profile = get_profile("tiny", max_steps=7, lr=1e-3, target_modules=["q_proj", "v_proj"])
    assert profile.max_steps == 7 and profile.target_modules == ("q_proj", "v_proj")
    assert get_profile("tiny", lr=1).lr == 1  # an int learning rate is a number too
    for name in PROFILES:
        assert get_profile(name).name == name


def test_course_model_dir_points_a_gpu_profile_at_a_local_model(monkeypatch):
    from helpers.profiles import resolve_profile

    monkeypatch.setenv("COURSE_MODEL_DIR", "build/shapes/t4")
    profile, why = resolve_profile("t4")
    assert profile.model_id == "build/shapes/t4" and "COURSE_MODEL_DIR" in why
    assert resolve_profile("tiny")[0].model_id != "build/shapes/t4"  # tiny keeps its model
    assert resolve_profile("t4", model_id="x")[0].model_id == "x"  # an explicit override wins


def test_every_hub_model_is_pinned_to_a_commit():
    import re

    for profile in PROFILES.values():
        if profile.is_local:
            assert profile.revision is None, profile.name
        else:  # a commit sha: a branch or tag can move under the course
            assert re.fullmatch(r"[0-9a-f]{40}", profile.revision or ""), profile.name
    with pytest.raises(TypeError, match="profile 'tiny': revision=5 must be a string"):
        get_profile("tiny", revision=5)
    with pytest.raises(ValueError, match="revision=' ' is empty"):
        get_profile("t4", revision=" ")


def test_another_model_does_not_inherit_the_profiles_commit(monkeypatch):
    assert get_profile("t4", model_id="someone/else").revision is None  # its main branch
    assert get_profile("t4", model_id="someone/else", revision="abc").revision == "abc"
    monkeypatch.setenv("COURSE_MODEL_DIR", "build/shapes/t4")
    assert get_profile("t4").revision is None  # a local folder has no hub commit


def test_loading_passes_the_pinned_revision(monkeypatch):
    from types import SimpleNamespace

    from helpers import models

    calls = []

    def fake_from_pretrained(model_id, **kwargs):
        calls.append((model_id, kwargs.get("revision")))
        return SimpleNamespace(eval=lambda: None, pad_token="<pad>")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    profile = get_profile("gpu-4gb")
    models.load_model(profile)
    assert calls == [(profile.model_id, profile.revision)] * 2


def test_load_4bit_loads_a_hub_model_at_its_pinned_commit(monkeypatch):
    """Chapter 03's 4-bit load passes the profile's revision, as load_model does."""
    from helpers.profiles import REVISIONS
    from helpers.qlora import library

    seen = {}

    def fake_from_pretrained(model_id, **kwargs):
        seen.update(kwargs, model_id=model_id)
        raise RuntimeError("stop here")

    monkeypatch.setattr(library.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(RuntimeError, match="stop here"):
        library.load_4bit("Qwen/Qwen2.5-1.5B-Instruct", torch.float16)
    assert seen["revision"] == REVISIONS["Qwen/Qwen2.5-1.5B-Instruct"]
    with pytest.raises(RuntimeError, match="stop here"):
        library.load_4bit("/some/local/folder", torch.float16)
    assert seen["revision"] is None


# The four T4-class profiles as they were written out field by field, before t4x2, p100 and
# gpu-bf16 were derived from t4 with dataclasses.replace: deriving them must change nothing.
T4 = {
    "name": "t4",
    "model_id": "Qwen/Qwen2.5-1.5B-Instruct",
    "revision": "989aa7980e4cf806f80c7fef2b1adb7bc71aa306",
    "compute_dtype": "float16",
    "load_in_4bit": True,
    "max_seq_len": 512,
    "micro_batch_size": 2,
    "grad_accum_steps": 8,
    "max_steps": 100,
    "lr": 2e-4,
    "lora_r": 16,
    "lora_alpha": 32,
    "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "eval_examples": 200,
    "gradient_checkpointing": True,
    "min_gpu_memory_gb": 12.0,
    "description": "1.5B model, 4-bit NF4 base, fp16 compute: a free Colab or Kaggle T4",
}
DERIVED = {
    "t4x2": {
        "grad_accum_steps": 4,
        "description": "t4 on Kaggle's two T4s: one process per GPU, half the accumulation each",
    },
    "p100": {
        "description": "as t4, on a Kaggle P100 (16 GB, fp16 without tensor cores, no LLM.int8)"
    },
    "gpu-bf16": {
        "compute_dtype": "bfloat16",
        "description": "as t4, in bf16, for GPUs with native bf16 (Ampere or newer, 12+ GB)",
    },
}


@pytest.mark.parametrize("name", ["t4", *DERIVED])
def test_t4_class_profiles_keep_their_values(name):
    expected = {**T4, "name": name, **DERIVED.get(name, {})}
    assert PROFILES[name].to_dict() == expected


def test_profiles_keep_their_order():
    assert list(PROFILES) == ["tiny", "gpu-4gb", "t4", "t4x2", "t4-8b", "p100", "gpu-bf16"]
