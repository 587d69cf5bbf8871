"""Writes happen whole or not at all (``helpers.atomic``): an interrupted save leaves the old
file or folder as it was and no temporary name behind, a full disk names the file, two
processes recording results at once lose nothing, and a resumed run notices a base model whose
weights changed anywhere."""

from __future__ import annotations

import errno
import json
import multiprocessing
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import atomic, report
from helpers.ggufq import export
from helpers.lora import library as lora_library
from helpers.lora import naive as lora_naive
from helpers.paths import TINY_MODEL_DIR
from helpers.qlora import checkpoint, integrity


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "tmp" in p.name or "partial" in p.name)


# -- the shared module -------------------------------------------------------------------------


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic.write_text(tmp_path / "notes.json", "old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []
    with pytest.raises(TypeError):
        atomic.write_json(path, {"not json": object()})
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "replace", _full_disk)
    with pytest.raises(OSError, match="could not write .*results.json.*disk is full") as err:
        atomic.write_json(tmp_path / "results.json", {"a": 1})
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_as_a_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "adapter"
    with atomic.atomic_folder(folder) as tmp:
        (tmp / "weights").write_text("v1")
        (tmp / "config").write_text("v1")
    (folder / "tokenizer.json").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_folder(folder) as tmp:
            (tmp / "weights").write_text("v2")
            raise KeyboardInterrupt  # between the weights and the config
    assert (folder / "weights").read_text() == "v1" and (folder / "config").read_text() == "v1"
    with atomic.atomic_folder(folder, carry_over=lambda name: name == "tokenizer.json") as tmp:
        (tmp / "weights").write_text("v2")
        (tmp / "config").write_text("v2")
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "weights": "v2",
        "config": "v2",
        "tokenizer.json": "kept",
    }
    assert _leftovers(tmp_path) == []


# -- results.json --------------------------------------------------------------------------------


def _record_many(chapter: str, count: int) -> None:
    report.set_chapter(chapter)
    for i in range(count):
        report.record(f"n{i}", i)


def test_two_processes_recording_at_once_lose_no_number(tmp_path, capsys):
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=_record_many, args=(c, 150)) for c in ("90_a", "91_b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
        assert writer.exitcode == 0
    saved = json.loads(report.results_path().read_text())
    assert sum(len(numbers) for numbers in saved.values()) == 300
    assert saved["90_a"]["n149"] == 149 and saved["91_b"]["n0"] == 0
    assert _leftovers(tmp_path) == []


def test_a_corrupt_results_file_is_named(tmp_path):
    report.results_path().write_text("{")
    report.set_chapter("92_c")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        report.record("x", 1)


# -- adapter folders -------------------------------------------------------------------------


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return LlamaForCausalLM(config)


class _ConfigWriteFails:
    """Stands in for the ``json`` module of the naive twin: the config cannot be written."""

    dumps = staticmethod(_full_disk)
    loads = staticmethod(json.loads)


@pytest.mark.parametrize("twin", ["naive", "library"])
def test_an_interrupted_adapter_save_keeps_weights_and_config_together(tmp_path, monkeypatch, twin):
    lora = lora_naive if twin == "naive" else lora_library
    folder = tmp_path / "adapter"
    lora.save_adapter(lora.add_lora(_tiny_llama(), 4, 8, ("q_proj",)), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    if twin == "naive":
        monkeypatch.setattr(lora_naive, "json", _ConfigWriteFails)
    else:  # peft writes the weights, then the config
        from peft import LoraConfig

        monkeypatch.setattr(LoraConfig, "save_pretrained", _full_disk)
    bigger = lora.add_lora(_tiny_llama(1), 8, 16, ("q_proj",))  # other tensors, other config
    with pytest.raises(OSError) as err:
        lora.save_adapter(bigger, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert _leftovers(tmp_path) == []
    assert str(folder) in str(err.value) and "disk is full" in str(err.value)
    monkeypatch.undo()
    fresh = lora.load_adapter(_tiny_llama(), folder)  # the old pair still loads
    assert fresh is not None


# -- GGUF ------------------------------------------------------------------------------------


def test_a_gguf_export_that_fails_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    monkeypatch.setattr(export.gguf.GGUFWriter, "write_tensor_data", _full_disk)
    with pytest.raises(OSError, match=r"could not write .*model\.gguf.*disk is full"):
        export.write_gguf(TINY_MODEL_DIR, out, "Q8_0")
    assert list(tmp_path.iterdir()) == []


# -- checkpoints -----------------------------------------------------------------------------


def test_a_checkpoint_save_that_fails_leaves_no_temporary_folder(tmp_path, monkeypatch):
    model = lora_naive.add_lora(_tiny_llama(), 4, 8, ("q_proj",))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    state = {"step": 1, "losses": [1.0]}
    checkpoint.save_checkpoint(tmp_path, 1, model, optimizer, state)
    monkeypatch.setattr(integrity, "write_manifest", _full_disk)
    with pytest.raises(OSError) as err:
        checkpoint.save_checkpoint(tmp_path, 2, model, optimizer, {**state, "step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001"]
    assert "checkpoint-0000002" in str(err.value) and "disk is full" in str(err.value)


# -- the run fingerprint ---------------------------------------------------------------------


def _middle_tensor(file) -> str:
    """A tensor stored wholly outside the file's first and last MiB."""
    with open(file, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    size, mib = file.stat().st_size, 2**20
    for name, info in header.items():
        if name != "__metadata__":
            start, end = (8 + header_size + o for o in info["data_offsets"])
            if start > mib and end < size - mib:
                return name
    raise AssertionError(f"{file}: no tensor lies in the middle")


def test_a_base_changed_in_the_middle_of_its_weights_is_another_model(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    base = tmp_path / "a" / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    weights = base / "model.safetensors"
    assert weights.stat().st_size > 3 * 2**20, "the test needs a middle beyond 2 MiB"
    changed = tmp_path / "b" / "base"
    shutil.copytree(base, changed)
    tensors = load_file(weights)
    name = _middle_tensor(weights)
    tensors[name] = tensors[name] * 2
    with safe_open(weights, "pt") as f:
        metadata = f.metadata()
    save_file(tensors, changed / "model.safetensors", metadata=metadata)
    records = [{"prompt": "p", "completion": "c"}]
    prints = [
        integrity.run_fingerprint(LlamaForCausalLM.from_pretrained(folder), records)
        for folder in (base, changed, base)
    ]
    assert prints[0]["model"] == prints[1]["model"]  # same folder name: the hash decides
    assert prints[0]["model_config"] != prints[1]["model_config"]
    assert prints[0] == prints[2]


def test_a_hub_model_is_keyed_on_its_commit_and_the_hubs_file_hashes(tmp_path, monkeypatch):
    """A model loaded by hub id: its commit and, from the local cache, each weight file's blob
    name (the sha256 the hub published, for files kept in LFS) enter the fingerprint."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo, commit = tmp_path / "models--org--model", "a" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "blobs").mkdir()

    def link_weights(sha256: str) -> None:
        (repo / "blobs" / sha256).write_bytes(b"weights")
        (snapshot / "model.safetensors").unlink(missing_ok=True)
        (snapshot / "model.safetensors").symlink_to(f"../../blobs/{sha256}")

    model, records = _tiny_llama(), [{"prompt": "p", "completion": "c"}]
    model.config._name_or_path = "org/model"

    def fingerprint(commit_hash: str) -> str:
        model.config._commit_hash = commit_hash
        return integrity.run_fingerprint(model, records)["model_config"]

    link_weights("1" * 64)
    first = fingerprint(commit)
    link_weights("2" * 64)  # other published weights at the same commit (a damaged cache)
    assert fingerprint(commit) != first
    link_weights("1" * 64)
    assert fingerprint(commit) == first
    assert fingerprint("b" * 40) != first  # another commit: another model
