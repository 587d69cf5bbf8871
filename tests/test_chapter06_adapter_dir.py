"""Chapter 06's ``ADAPTER_DIR``: a folder that is not a peft adapter is refused with an error
that names it, before anything is merged (the adapter cell run with a stand-in loader)."""

import json
from pathlib import Path

import pytest

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "06_deploy.ipynb"


def _adapter_cell() -> str:
    cells = json.loads(CHAPTER.read_text())["cells"]
    (source,) = [
        "".join(c["source"]) for c in cells if "def qlora_adapter_model" in "".join(c["source"])
    ]
    return source.split("\n\nadapter_model, tokenizer, source =")[0]  # the function only


def _namespace(adapter_dir, loaded):
    class Peft:
        @staticmethod
        def from_pretrained(base, folder):
            loaded.append(Path(folder))
            return type("M", (), {"eval": lambda self: self})()

    namespace = {"ADAPTER_DIR": adapter_dir, "Path": Path, "PeftModel": Peft,
                 "load_model": lambda profile, load_in_4bit: ("base", "tokenizer"), "profile": None}  # fmt: skip
    exec(compile(_adapter_cell(), "adapter cell", "exec"), namespace)
    return namespace


def test_a_folder_without_an_adapter_is_refused(tmp_path):
    loaded = []
    with pytest.raises(FileNotFoundError, match=r"ADAPTER_DIR=.*no adapter_config.json"):
        _namespace(str(tmp_path), loaded)["qlora_adapter_model"]()
    assert not loaded


def test_an_adapter_folder_is_loaded(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    loaded = []
    _, tokenizer, source = _namespace(str(tmp_path), loaded)["qlora_adapter_model"]()
    assert loaded == [tmp_path] and tokenizer == "tokenizer" and str(tmp_path) in source
