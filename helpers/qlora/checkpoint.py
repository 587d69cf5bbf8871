"""Checkpoints that survive a disconnect, and a training loop that resumes from them exactly.

A free Colab session can end at any moment. To lose at most ``save_every`` steps, a checkpoint
holds everything the next step depends on:

    adapter.safetensors   the trainable tensors (the LoRA adapter), by parameter name
    optimizer.pt          AdamW's moments and step counts (``optimizer.state_dict()``)
    trainer_state.pt      step, losses, data position, scheduler, loss scaler, RNG states

Tensors go in safetensors; the two ``.pt`` files hold only tensors, numbers, lists and dicts,
so they load with ``torch.load(weights_only=True)``, which cannot run code from the file.
A checkpoint is written to a temporary folder and renamed into place, so a session killed
mid-save leaves the previous checkpoint intact. Works with either twin of ``helpers.qlora``
(and any model whose trainable parameters are the ones to save).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from helpers.data import IGNORE_INDEX, Collator
from helpers.train import token_loss_sum

PREFIX = "checkpoint-"


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


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None if there is none."""
    found = sorted(Path(folder).glob(PREFIX + "*")) if Path(folder).is_dir() else []
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, step: int, model, optimizer, state: dict) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically (see the module docstring).

    Args:
        state: the trainer state (numbers, lists, tensors, nested dicts); RNG states are added.
    Returns:
        The checkpoint folder.
    """
    folder = Path(folder)
    final, tmp = folder / f"{PREFIX}{step:07d}", folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = {n: t.contiguous().cpu() for n, t in trainable_state(model).items()}
    save_file(adapter, tmp / "adapter.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({**state, "rng": capture_rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic on one file system: the checkpoint appears whole or not at all
    return final


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Load adapter and optimizer state into a freshly built model and optimizer.

    Returns:
        The trainer state (step, losses, data position, scheduler, scaler, rng).
    Raises:
        KeyError: the checkpoint's tensors do not match the model's trainable parameters.
    """
    path = Path(path)
    saved, params = load_file(path / "adapter.safetensors"), dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != wanted:
        raise KeyError(
            f"{path} does not fit this model: missing {sorted(wanted - set(saved))[:3]}, "
            f"unexpected {sorted(set(saved) - wanted)[:3]}. Build the model the same way."
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return torch.load(path / "trainer_state.pt", weights_only=True)


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


def _resume(folder, model, optimizer, scheduler, scaler) -> tuple[int, list[float]]:
    """Load the latest checkpoint in ``folder`` if there is one; return (step, losses so far)."""
    last = latest_checkpoint(folder)
    if last is None:
        return 0, []
    state = load_checkpoint(last, model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])  # last: building the model drew random numbers too
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
) -> list[float]:
    """Train the trainable parameters, checkpointing every ``save_every`` steps; if ``folder``
    already holds a checkpoint, resume from the latest one.

    Args:
        folder: where checkpoints go (on Colab, a Google Drive folder survives a disconnect).
        mixed_precision: "fp16" (autocast + GradScaler, a T4) or "bf16" on a GPU; None: the
            weights' own dtype.
        stop_after: end the session after this global step, as a disconnect would (for demos
            and tests); the last checkpoint is what a new session resumes from.
    Returns:
        The loss of every optimizer step since step 0 (restored ones included).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: add adapters first.")
    if save_every < 1:
        raise ValueError(f"save_every must be a positive number of steps, got {save_every}")
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = partial(_lr_factor, warmup_steps=warmup_steps, max_steps=max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "")
    scaler = torch.amp.GradScaler("cuda", enabled=mixed_precision == "fp16")
    start, losses = _resume(folder, model, optimizer, scheduler, scaler)
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
            save_checkpoint(folder, done, model, optimizer, state)
    model.eval()
    return losses
