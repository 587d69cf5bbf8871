"""Checkpoints refuse another run's settings, notice corruption, fall back to the last good one,
and keep only the last K plus the final one."""

from __future__ import annotations

import shutil

import pytest
import torch
from checkpoint_support import RUN, build, data, make_model_dir, tokenizer, train

from helpers.lora import library as lora_library
from helpers.memory.naive import MODELS
from helpers.profiles import ALL_LINEAR
from helpers.qlora import checkpoint, integrity
from helpers.qlora.integrity import CheckpointError, RunMismatchError


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    return make_model_dir(tmp_path_factory.mktemp("random-llama"), len(tok))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir, tok):
    """An uninterrupted 6-step run (keeping every checkpoint): its losses and adapter."""
    folder = tmp_path_factory.mktemp("reference")
    model = build(model_dir)
    losses, _ = train(model, tok, data(), folder, keep_last=None)
    return folder, losses, checkpoint.trainable_state(model)


def stopped_copy(reference, tmp_path, steps=(2, 3, 4)):
    """A run folder holding the reference's checkpoints at ``steps`` (as if stopped after)."""
    folder = tmp_path / "run"
    folder.mkdir()
    for step in steps:
        name = f"{checkpoint.PREFIX}{step:07d}"
        shutil.copytree(reference[0] / name, folder / name)
    return folder


def assert_same_as_reference(reference, losses, model):
    assert losses == reference[1]
    ours = checkpoint.trainable_state(model)
    assert all(torch.equal(ours[k], reference[2][k]) for k in reference[2])


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("adapter.safetensors", lambda p: flip_byte(p, -5), "checksum differs"),
        ("optimizer.pt", lambda p: flip_byte(p, 2000), "checksum differs"),
        ("trainer_state.pt", lambda p: flip_byte(p, 100), "checksum differs"),
        ("adapter.safetensors", lambda p: p.write_bytes(p.read_bytes()[:50]), "bytes, the manif"),
        ("optimizer.pt", lambda p: p.unlink(), "missing"),
        ("manifest.json", lambda p: p.unlink(), "an incomplete or foreign"),
        ("manifest.json", lambda p: p.write_text("{"), "unreadable"),
    ],
)
def test_corrupt_newest_is_named_skipped_and_the_previous_used(
    reference, model_dir, tok, tmp_path, name, damage, expected
):
    folder = stopped_copy(reference, tmp_path)
    damage(folder / "checkpoint-0000004" / name)
    with pytest.raises(CheckpointError, match=expected) as err:
        integrity.verify(folder / "checkpoint-0000004")
    assert "checkpoint-0000004" in str(err.value)
    model = build(model_dir, seed=1)
    losses, said = train(model, tok, data(), folder)
    assert any("skipping checkpoint-0000004" in s and expected in s for s in said), said
    assert any("checkpoint-0000003 (step 3)" in s for s in said), said
    assert_same_as_reference(reference, losses, model)


def test_empty_newer_folder_and_other_folders_are_ignored(reference, model_dir, tok, tmp_path):
    folder = stopped_copy(reference, tmp_path, steps=(2,))
    (folder / "checkpoint-0000005").mkdir()  # a sync tool's empty folder
    (folder / ".tmp-checkpoint-0000003").mkdir()  # a save that never finished
    (folder / "notes").mkdir()
    (folder / "checkpoint-x").mkdir()
    model = build(model_dir, seed=2)
    losses, said = train(model, tok, data(), folder)
    assert said[0].startswith("skipping checkpoint-0000005") and "manifest.json" in said[0]
    assert_same_as_reference(reference, losses, model)


def test_load_errors_name_the_file(reference, model_dir, tmp_path):
    path = stopped_copy(reference, tmp_path, steps=(2,)) / "checkpoint-0000002"
    (path / "optimizer.pt").write_bytes(b"not a zip")
    model = build(model_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(CheckpointError, match="optimizer.pt: cannot be read"):
        checkpoint.load_checkpoint(path, model, optimizer, verify=False)
    with pytest.raises(CheckpointError, match="optimizer.pt: .* bytes, the manifest says"):
        checkpoint.load_checkpoint(path, model, optimizer)


CHANGES = [
    ("seed", {"seed": 1}),
    ("lr", {"lr": 5e-4}),
    ("warmup_steps", {"warmup_steps": 1}),
    ("micro_batch_size", {"micro_batch_size": 2}),
    ("grad_accum_steps", {"grad_accum_steps": 2}),
    ("max_seq_len", {"max_seq_len": 40}),
    ("mixed_precision", {"mixed_precision": "bf16"}),
]


@pytest.mark.parametrize(("setting", "change"), CHANGES, ids=[c[0] for c in CHANGES])
def test_changed_setting_is_refused_naming_both_values(
    reference, model_dir, tok, tmp_path, setting, change
):
    folder = stopped_copy(reference, tmp_path)
    with pytest.raises(RunMismatchError) as err:
        train(build(model_dir), tok, data(), folder, **change)
    message = str(err.value)
    value = next(iter(change.values()))
    before = {"grad_accum_steps": 1, "mixed_precision": None, **RUN}[setting]
    assert f"{setting}: checkpoint {before!r}, this run {value!r}" in message
    assert "To start fresh, delete" in message and f"allow_changes=('{setting}',)" in message


def test_other_data_model_twin_and_lora_are_refused(reference, model_dir, tok, tmp_path):
    folder = stopped_copy(reference, tmp_path)
    other_dir = make_model_dir(tmp_path / "same-shapes", len(tok), seed=5)
    cases = [
        ("data", lambda: train(build(model_dir), tok, data(23), folder)),
        ("model", lambda: train(build(other_dir), tok, data(), folder)),
        ("twin", lambda: train(build(model_dir, twin=lora_library), tok, data(), folder)),
        ("lora_r", lambda: train(build(model_dir, r=8), tok, data(), folder)),
        ("lora_alpha", lambda: train(build(model_dir, alpha=4), tok, data(), folder)),
        ("lora_dropout", lambda: train(build(model_dir, dropout=0.0), tok, data(), folder)),
        ("target_modules", lambda: train(build(model_dir, targets=("k_proj",)), tok, data(), folder)),
    ]  # fmt: skip
    for setting, run in cases:
        with pytest.raises(RunMismatchError, match=f"  {setting}: checkpoint") as err:
            run()
        if setting in integrity.STRUCTURAL:
            assert "cannot change within a run" in str(err.value), setting
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["checkpoint-0000002", "checkpoint-0000003", "checkpoint-0000004"]


def test_later_max_steps_is_allowed_and_said(reference, model_dir, tok, tmp_path):
    folder = stopped_copy(reference, tmp_path)
    losses, said = train(build(model_dir), tok, data(), folder, max_steps=8)
    assert any("max_steps changed from 6 to 8: safe" in s for s in said), said
    assert len(losses) == 8 and losses[:4] == reference[1][:4]


def test_changed_lr_is_applied_when_allowed_and_said(reference, model_dir, tok, tmp_path):
    folder = stopped_copy(reference, tmp_path)
    model = build(model_dir)
    losses, said = train(model, tok, data(), folder, lr=5e-4, allow_changes=("lr",))
    assert any("lr changed from 0.001 to 0.0005 (allowed): applied" in s for s in said), said
    saved = torch.load(folder / "checkpoint-0000006" / "trainer_state.pt", weights_only=True)
    assert saved["scheduler"]["base_lrs"] == [5e-4]
    assert losses[:5] == reference[1][:5] and losses[5] != reference[1][5]
    with pytest.raises(RunMismatchError, match="lora_r: checkpoint"):
        train(build(model_dir, r=8), tok, data(), folder, allow_changes=("lora_r",))


def test_keeps_the_last_k_and_the_final_one(model_dir, tok, tmp_path):
    train(build(model_dir), tok, data(), tmp_path / "a", keep_last=2)
    kept = [p.name for p in checkpoint.checkpoints(tmp_path / "a")]
    assert kept == ["checkpoint-0000005", "checkpoint-0000006"]
    train(build(model_dir), tok, data(), tmp_path / "a", keep_last=1, max_steps=9)
    kept = [p.name for p in checkpoint.checkpoints(tmp_path / "a")]
    assert kept == ["checkpoint-0000006", "checkpoint-0000009"]  # 6 was a run's final one
    with pytest.raises(ValueError, match="keep_last must be a positive"):
        train(build(model_dir), tok, data(), tmp_path / "b", keep_last=0)


def test_storage_estimate_matches_disk_and_scales_to_t4(reference, model_dir):
    path = reference[0] / "checkpoint-0000006"
    on_disk = integrity.folder_bytes(path) - (path / integrity.MANIFEST).stat().st_size
    model = build(model_dir)
    shape = integrity.ModelShape.from_config(model.config, "random")
    predicted = integrity.checkpoint_bytes(shape, 4, ("q_proj", "v_proj"))
    assert predicted <= on_disk <= predicted + 64 * 2**10  # + trainer state, headers
    t4 = integrity.checkpoint_bytes(MODELS["Qwen2.5-1.5B"], 16, ALL_LINEAR)
    assert t4 == 12 * 18_464_768  # r=16 on 7 linears x 28 layers: 18.5M values, 12 B each
    assert integrity.storage_bytes(t4, keep_last=2, n_saves=250) == 3 * t4
    assert integrity.storage_bytes(t4, keep_last=None, n_saves=250) == 250 * t4


def test_run_storage_for_each_profile():
    from helpers.profiles import PROFILES

    t4 = integrity.run_storage(PROFILES["t4"], max_steps=1000, save_every=4)
    assert t4["n_saves"] == 250 and t4["kept"] == 3
    assert t4["total_bytes"] == 3 * t4["bytes_per_checkpoint"] == 3 * 12 * 18_464_768
    assert t4["unpruned_bytes"] == 250 * t4["bytes_per_checkpoint"]
    for profile in PROFILES.values():  # every profile's model has known sizes
        assert integrity.run_storage(profile, 10, 4, keep_last=None)["kept"] == 3
    with pytest.raises(ValueError, match="no local config.json"):
        integrity.model_shape("someone/unknown-model")


def test_same_shapes_other_weights_refused_moved_folder_accepted(
    reference, model_dir, tok, tmp_path
):
    folder = stopped_copy(reference, tmp_path)
    twin_dir = make_model_dir(tmp_path / "other" / model_dir.name, len(tok), seed=7)
    with pytest.raises(RunMismatchError, match="  model_config: checkpoint"):
        train(build(twin_dir), tok, data(), folder)
    moved = tmp_path / "moved" / model_dir.name
    shutil.copytree(model_dir, moved)
    model = build(moved, seed=3)
    losses, _ = train(model, tok, data(), folder)
    assert_same_as_reference(reference, losses, model)
