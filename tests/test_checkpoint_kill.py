"""Kill a training process with SIGKILL in the middle of its saves, then resume: the run must end
bit-identical to an uninterrupted one, every time.

Each trial forks a training process (forking skips re-importing torch, which would cost seconds)
that sends itself SIGKILL at a seeded point of one save: before, halfway through or after
writing one file, the manifest, or the pruning of old checkpoints. A fresh model with another
LoRA init then resumes from whatever the killed process left on disk.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal

import pytest
import torch
from checkpoint_support import RUN, build, data, make_model_dir, tokenizer, train

from helpers.qlora import checkpoint, integrity

TRIALS = 6
SEED = 20  # the trials' kill points are drawn from this seed
PHASES = ("before", "half", "after")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill_event: int, phase: str) -> None:
    """In the child: SIGKILL at the ``kill_event``-th write of a save (files, manifest, prune)."""
    seen = [0]
    write, manifest, prune = (
        checkpoint._write,
        integrity.write_manifest,
        checkpoint.prune_checkpoints,
    )

    def is_target() -> bool:
        seen[0] += 1
        return seen[0] == kill_event

    def killing_write(path, payload):
        if not is_target():
            return write(path, payload)
        if phase == "before":
            _die()
        write(path, payload[: len(payload) // 2] if phase == "half" else payload)
        _die()

    def killing_manifest(folder, *args):
        if not is_target():
            return manifest(folder, *args)
        if phase != "before":
            manifest(folder, *args)
            if phase == "half":
                text = (folder / integrity.MANIFEST).read_bytes()
                (folder / integrity.MANIFEST).write_bytes(text[: len(text) // 2])
        _die()

    def killing_prune(folder, keep_last):
        if not is_target():
            return prune(folder, keep_last)
        old = checkpoint.checkpoints(folder)[:-keep_last]
        if phase == "half" and old:  # one file of an old checkpoint deleted, then killed
            (old[0] / "optimizer.pt").unlink()
        elif phase == "after":
            prune(folder, keep_last)
        _die()

    checkpoint._write, integrity.write_manifest = killing_write, killing_manifest
    checkpoint.prune_checkpoints = killing_prune


def _child(model_dir, folder, kill_event: int, phase: str) -> None:
    torch.set_num_threads(1)  # as the parent: the same sums in the same order
    _arm(kill_event, phase)
    train(build(model_dir), tokenizer(), data(), folder)
    os._exit(3)  # reaching the end means the kill point was never hit


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (Linux, macOS)")
def test_sigkill_during_saves_then_resume_is_bit_identical(tmp_path, single_thread):
    tok = tokenizer()
    model_dir = make_model_dir(tmp_path / "model", len(tok))
    whole = build(model_dir)
    losses, _ = train(whole, tok, data(), tmp_path / "whole")
    expected = checkpoint.trainable_state(whole)
    rng = random.Random(SEED)
    context = multiprocessing.get_context("fork")
    for trial in range(TRIALS):
        # per save: 3 files, the manifest, the pruning (5 events); each kind in turn
        step, phase = rng.randint(1, RUN["max_steps"]), rng.choice(PHASES)
        kill_event = 5 * (step - 1) + trial % 5 + 1
        folder = tmp_path / f"trial-{trial}"
        child = context.Process(target=_child, args=(model_dir, folder, kill_event, phase))
        child.start()
        child.join(timeout=120)
        where = f"trial {trial}: kill at event {kill_event} ({phase})"
        assert child.exitcode == -signal.SIGKILL, f"{where}: exit code {child.exitcode}"
        # another LoRA init, which the checkpoint overwrites; with none yet, the run's own init
        has_checkpoint = checkpoint.latest_checkpoint(folder) is not None
        resumed = build(model_dir, seed=100 + trial if has_checkpoint else 0)
        resumed_losses, said = train(resumed, tok, data(), folder)
        assert resumed_losses == losses, f"{where}: {said}"
        ours = checkpoint.trainable_state(resumed)
        assert all(torch.equal(ours[k], expected[k]) for k in expected), where
        kept = checkpoint.checkpoints(folder)
        assert len(kept) <= RUN.get("keep_last", 2) + 1, f"{where}: {[p.name for p in kept]}"
