"""Where chapters 06 and 07 take their QLoRA adapter from (``helpers.qlora.adapter``): a folder
named by ``ADAPTER_DIR`` (refused, before any model is loaded, when it is not a peft adapter),
else chapter 03's when it saved one for this model, else one trained here. Run with stand-ins
for the model loader and peft, so that only the choice is tested."""

import json
from types import SimpleNamespace

import peft
import pytest

from helpers import models
from helpers.qlora import adapter

PROFILE = SimpleNamespace(model_id="data/tiny-llama", max_steps=10)


@pytest.fixture
def loaded(monkeypatch, tmp_path):
    """Stand-in loader and peft; returns the folders peft was asked to load."""
    folders = []
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(models, "load_model", lambda profile, load_in_4bit: ("base", "tokenizer"))

    def from_pretrained(base, folder):
        folders.append(folder)
        return SimpleNamespace(eval=lambda: "peft model")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", staticmethod(from_pretrained))
    return folders


def _save_chapter03(tmp_path, model_id):
    folder = tmp_path / "build" / "outputs" / "03_qlora"
    (folder / "qlora-adapter").mkdir(parents=True)
    (folder / "qlora-adapter" / "adapter_config.json").write_text("{}")
    manifest = {"model_id": model_id, "steps": 100, "qlora": "qlora-adapter"}
    (folder / "adapters.json").write_text(json.dumps(manifest))
    return folder / "qlora-adapter"


def test_a_folder_without_an_adapter_is_refused(loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(FileNotFoundError, match=r"ADAPTER_DIR=.*no adapter_config.json"):
        adapter.load_adapter_model(PROFILE, tmp_path, adapter_dir=tmp_path)
    assert not loaded


def test_an_adapter_folder_is_loaded(loaded, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    model, tokenizer, source = adapter.load_adapter_model(PROFILE, tmp_path, adapter_dir=tmp_path)
    assert loaded == [tmp_path] and tokenizer == "tokenizer" and str(tmp_path) in source


def test_chapter03s_adapter_is_used_for_its_model(loaded, tmp_path):
    folder = _save_chapter03(tmp_path, PROFILE.model_id)
    _, _, source = adapter.load_adapter_model(PROFILE, tmp_path)
    assert loaded == [folder] and source == "chapter 03's (100 steps)"


def test_chapter03s_adapter_for_another_model_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    _save_chapter03(tmp_path, "Qwen/Qwen2.5-1.5B-Instruct")
    assert adapter.saved_adapter(PROFILE.model_id) is None
    assert adapter.saved_adapter("Qwen/Qwen2.5-1.5B-Instruct") is not None
