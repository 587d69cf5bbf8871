"""Checkpoints that survive a disconnect, and a training loop that resumes from them exactly.

A free Colab session can end at any moment. To lose at most ``save_every`` steps, a checkpoint
holds everything the next step depends on:

    adapter.safetensors   the trainable tensors (the LoRA adapter), by parameter name
    optimizer.pt          AdamW's moments and step counts (``optimizer.state_dict()``)
    trainer_state.pt      step, losses, data position, scheduler, loss scaler, RNG states
    manifest.json         sha256 and size of each file, and the run's settings (written last)

Tensors go in safetensors; the two ``.pt`` files hold only tensors, numbers, lists and dicts,
so they load with ``torch.load(weights_only=True)``, which cannot run code from the file.
A checkpoint is written to a temporary folder and renamed into place (``helpers.atomic``), so a
session killed mid-save leaves the previous checkpoint intact. On resume the newest checkpoint
whose files match their checksums is used (a corrupt or incomplete one is reported and skipped),
and a checkpoint written with other settings is refused, naming each one
(``helpers.qlora.integrity``).
Only the last ``keep_last`` checkpoints and the final one are kept. Works with either twin of
``helpers.qlora`` (and any model whose trainable parameters are the ones to save).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm.auto import tqdm

from helpers.atomic import atomic_folder, remove_stale
from helpers.data import IGNORE_INDEX, Collator
from helpers.qlora import integrity
from helpers.qlora.integrity import PREFIX, CheckpointError, RunMismatchError
from helpers.train import token_loss_sum

__all__ = [
    "PREFIX",
    "CheckpointError",
    "RunMismatchError",
    "trainable_state",
    "capture_rng_state",
    "restore_rng_state",
    "checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "train_with_checkpoints",
]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (the adapter, for a LoRA model), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def capture_rng_state() -> dict:
    """Every random generator a training step may draw from: torch (CPU and each GPU), Python's
    ``random`` and NumPy's global generator. Dropout draws from torch's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def restore_rng_state(state: dict) -> None:
    """Put back the generators saved by ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def checkpoints(folder: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``folder``, oldest first; other names are ignored."""
    folder = Path(folder).expanduser()
    found = [p for p in folder.iterdir() if integrity.checkpoint_step(p) is not None]
    return sorted(found, key=integrity.checkpoint_step) if found else []


def _newest_good(folder: str | Path, say: Callable[[str], None] = print):
    """(path, manifest) of the newest checkpoint that passes its checksums, or (None, None).

    Each newer one that fails is reported by folder and file, and skipped.
    """
    if not Path(folder).expanduser().is_dir():
        return None, None
    for path in reversed(checkpoints(folder)):
        try:
            return path, integrity.verify(path)
        except CheckpointError as err:
            say(f"skipping {path.name}: {err}")
    return None, None


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete, uncorrupted checkpoint in ``folder``, or None if there is none."""
    return _newest_good(folder)[0]


def _write(path: Path, data: bytes) -> None:
    """One file of a checkpoint being built (inside its temporary folder)."""
    with path.open("wb") as f:
        f.write(data)


def save_checkpoint(
    folder: str | Path,
    step: int,
    model,
    optimizer,
    state: dict,
    *,
    fingerprint: dict | None = None,
    final: bool = False,
) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically (see the module docstring).

    Args:
        state: the trainer state (numbers, lists, tensors, nested dicts); RNG states are added.
        fingerprint: the run's settings (``integrity.run_fingerprint``), kept in the manifest.
        final: the run's last checkpoint, which pruning never removes.
    Returns:
        The checkpoint folder.
    """
    folder = Path(folder).expanduser()
    final_path = folder / f"{PREFIX}{step:07d}"
    adapter = {n: t.contiguous().cpu() for n, t in trainable_state(model).items()}
    remove_stale(folder, final_path.name)  # a save killed earlier (SIGKILL) left its folder
    # Written into a temporary folder beside it, renamed into place when complete
    # (helpers.atomic): the checkpoint appears whole or not at all, and a failed save, a full
    # disk included (the error names the checkpoint), leaves nothing behind.
    with atomic_folder(final_path) as tmp:
        _write(tmp / "adapter.safetensors", safetensors_bytes(adapter))
        for name, obj in (
            ("optimizer.pt", optimizer.state_dict()),
            ("trainer_state.pt", {**state, "rng": capture_rng_state()}),
        ):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            _write(tmp / name, buffer.getvalue())
        integrity.write_manifest(tmp, step, fingerprint or {}, final)  # last: marks it complete
    return final_path


def prune_checkpoints(folder: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; final ones are always kept.

    Returns:
        The folders deleted.
    """
    if keep_last is None:
        return []
    old = checkpoints(folder)[:-keep_last]
    gone = [p for p in old if not _is_final(p)]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def _is_final(path: Path) -> bool:
    try:
        return bool(json.loads((path / integrity.MANIFEST).read_text())["final"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read(path: Path, reader):
    """Run ``reader(path)``; any failure becomes a CheckpointError naming the file."""
    try:
        return reader(path)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err


def load_checkpoint(path: str | Path, model, optimizer, verify: bool = True) -> dict:
    """Load adapter and optimizer state into a freshly built model and optimizer.

    Args:
        verify: check every file against the manifest's checksums first.
    Returns:
        The trainer state (step, losses, data position, scheduler, scaler, rng).
    Raises:
        CheckpointError: a file is missing, corrupt or unreadable (the message names it).
        KeyError: the checkpoint's tensors do not match the model's trainable parameters.
    """
    path = Path(path).expanduser()
    if verify:
        integrity.verify(path)
    saved = _read(path / "adapter.safetensors", load_file)
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != wanted:
        raise KeyError(
            f"{path / 'adapter.safetensors'} does not fit this model: missing "
            f"{sorted(wanted - set(saved))[:3]}, unexpected {sorted(set(saved) - wanted)[:3]}. "
            "Build the model the same way."
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    load = partial(torch.load, weights_only=True)
    _read(path / "optimizer.pt", lambda p: optimizer.load_state_dict(load(p)))
    return _read(path / "trainer_state.pt", load)


def _lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up, then cosine decay to 0 (the usual LLM fine-tuning schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def micro_batch(dataset, collate: Collator, position: int, micro_batch_size: int, seed: int):
    """The micro-batch at a data position, computed directly (no replay on resume).

    Each epoch visits the records in its own seeded order: ``randperm`` seeded with seed + epoch.
    """
    per_epoch = len(dataset) // micro_batch_size
    epoch, index = divmod(position, per_epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch))
    picked = order[index * micro_batch_size : (index + 1) * micro_batch_size].tolist()
    return collate([dataset[i] for i in picked])


def _window_loss(model, window, amp_dtype, scaler) -> float:
    """Forward and backward over one accumulation window; the loss of the window."""
    device = next(model.parameters()).device
    n_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
    total = 0.0
    for batch in window:
        batch = {k: v.to(device) for k, v in batch.items()}
        ctx = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        )
        with ctx:
            loss = token_loss_sum(model, batch) / n_targets
        scaler.scale(loss).backward()  # fp16: scaled up so small gradients do not underflow
        total += loss.item()
    return total


def _check_run(path: Path, saved: dict, now: dict, allowed: set[str], say) -> set[str]:
    """Compare the checkpoint's run with this one: refuse, or say what changes.

    Returns:
        The names of the settings that differ (and were allowed).
    Raises:
        RunMismatchError: a setting differs that may not, or was not allowed to.
    """
    differences = integrity.compare_fingerprints(saved, now)
    differences.pop("max_steps", None)  # always safe: said below
    if not saved:  # a checkpoint from before fingerprints: nothing to compare
        say(f"{path.name} does not record its run's settings: resuming without checking them")
        return set()
    refused = {
        n: v for n, v in differences.items() if n in integrity.STRUCTURAL or n not in allowed
    }
    if refused:
        raise RunMismatchError(integrity.mismatch_message(path, refused, allowed))
    for name, (before, after) in differences.items():
        say(f"{path.name}: {name} changed from {before!r} to {after!r} (allowed): applied")
    old_end, new_end = saved.get("max_steps"), now.get("max_steps")
    if old_end != new_end:
        differences["max_steps"] = (old_end, new_end)
        say(
            f"{path.name}: max_steps changed from {old_end} to {new_end}: safe, the run "
            f"continues to step {new_end} and the schedule now ends there"
        )
    return set(differences)


def _resume(folder, model, optimizer, scheduler, scaler, *, fingerprint, allowed, say):
    """Load the newest good checkpoint in ``folder`` if there is one.

    Returns:
        (step, losses so far).
    """
    last, manifest = _newest_good(folder, say)
    if last is None:
        return 0, []
    changed = _check_run(last, manifest.get("fingerprint") or {}, fingerprint, allowed, say)
    state = load_checkpoint(last, model, optimizer, verify=False)  # verified just now
    scheduler.load_state_dict(state["scheduler"])
    if changed & {"lr", "warmup_steps", "max_steps"}:  # this run's lr and schedule from here on
        scheduler.base_lrs = [fingerprint["lr"]] * len(optimizer.param_groups)
        for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = fingerprint["lr"]
            group["lr"] = fingerprint["lr"] * fn(scheduler.last_epoch)
        say(f"learning rate at step {state['step']}: {optimizer.param_groups[0]['lr']:.3g}")
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])  # last: building the model drew random numbers too
    say(f"resumed from {last} (step {state['step']})")
    return state["step"], list(state["losses"])


def train_with_checkpoints(
    model,
    tokenizer,
    dataset,
    *,
    folder: str | Path,
    max_steps: int,
    save_every: int,
    micro_batch_size: int,
    lr: float,
    grad_accum_steps: int = 1,
    max_seq_len: int = 128,
    seed: int = 0,
    warmup_steps: int = 0,
    mixed_precision: str | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    keep_last: int | None = 2,
    allow_changes: Iterable[str] = (),
    say: Callable[[str], None] = print,
) -> list[float]:
    """Train the trainable parameters, checkpointing every ``save_every`` steps; if ``folder``
    already holds a checkpoint, resume from the newest good one.

    Args:
        folder: where checkpoints go (on Colab, a Google Drive folder survives a disconnect).
        mixed_precision: "fp16" (autocast + GradScaler, a T4) or "bf16" on a GPU; None: the
            weights' own dtype.
        stop_after: end the session after this global step, as a disconnect would (for demos
            and tests); the last checkpoint is what a new session resumes from.
        keep_last: checkpoints kept besides the final one (None: keep all).
        allow_changes: settings that may differ from the checkpoint's run on resume, e.g.
            ``("lr",)``: the new value applies from the resumed step on. A later ``max_steps``
            is always allowed; the model, twin and LoRA layout never change within a run.
        say: where resume messages go (skipped checkpoints, changed settings).
    Returns:
        The loss of every optimizer step since step 0 (restored ones included).
    Raises:
        RunMismatchError: the checkpoint in ``folder`` was written with other settings.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: add adapters first.")
    _check_counts(
        max_steps=max_steps,
        save_every=save_every,
        micro_batch_size=micro_batch_size,
        grad_accum_steps=grad_accum_steps,
        max_seq_len=max_seq_len,
    )
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(
            f"keep_last must be a positive number of checkpoints or None, got {keep_last!r}"
        )
    fingerprint = integrity.run_fingerprint(
        model, dataset, seed=seed, lr=float(lr), schedule="linear warm-up, then cosine to 0",
        warmup_steps=warmup_steps, micro_batch_size=micro_batch_size,
        grad_accum_steps=grad_accum_steps, max_seq_len=max_seq_len, max_steps=max_steps,
        mixed_precision=mixed_precision,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = partial(_lr_factor, warmup_steps=warmup_steps, max_steps=max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "")
    scaler = torch.amp.GradScaler("cuda", enabled=mixed_precision == "fp16")
    start, losses = _resume(
        folder, model, optimizer, scheduler, scaler,
        fingerprint=fingerprint, allowed=set(allow_changes), say=say,
    )  # fmt: skip
    if start >= max_steps and start:
        say(f"the checkpoint is at step {start}, max_steps is {max_steps}: nothing to train")
    collate = Collator(tokenizer, max_seq_len)
    end = max_steps if stop_after is None else min(max_steps, stop_after)
    model.train()
    for step in tqdm(range(start, end), desc="training", disable=not progress):
        first = step * grad_accum_steps  # data position: micro-batches consumed so far
        window = [
            micro_batch(dataset, collate, first + k, micro_batch_size, seed)
            for k in range(grad_accum_steps)
        ]
        losses.append(_window_loss(model, window, amp_dtype, scaler))
        scaler.step(optimizer)  # unscales first; skips the step if a gradient is inf/NaN
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % save_every == 0 or done == max_steps:
            state = {
                "step": done,
                "micro_batches_seen": done * grad_accum_steps,  # the data position
                "losses": losses,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
            }
            final = done == max_steps
            save_checkpoint(
                folder, done, model, optimizer, state, fingerprint=fingerprint, final=final
            )
            prune_checkpoints(folder, keep_last)
    model.eval()
    return losses


def _check_counts(**counts: int) -> None:
    """Each must be a positive int: a ValueError naming the argument otherwise."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
