"""What makes a checkpoint trustworthy: the run it belongs to, and files that are still whole.

Each checkpoint folder holds a ``manifest.json``, written last, with

- ``files``: the sha256 and size of every file, so a flipped byte, a truncated copy or a missing
  file is found before anything is loaded;
- ``fingerprint``: the settings of the run that wrote it (model, twin, LoRA, data, seed, learning
  rate and schedule, batch sizes, sequence length, steps), so a resume with other settings is
  refused with the differing values instead of silently continuing another run.

Also here: how much disk a run's checkpoints take (``checkpoint_bytes``, ``storage_bytes``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

from torch import nn

from helpers.memory import ModelShape, RunSpec
from helpers.memory.naive import MODELS, trainable_sizes

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
FILES = ("adapter.safetensors", "optimizer.pt", "trainer_state.pt")
NAME = re.compile(re.escape(PREFIX) + r"(\d+)")
# Settings that decide which tensors exist: a checkpoint cannot be loaded into another layout.
STRUCTURAL = ("model", "model_config", "twin", "lora_r", "target_modules", "trainable")
# The learning rate and optimizer state at the last step: AdamW's two moments, 4 bytes each.
ADAMW_BYTES_PER_VALUE = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the folder and the file."""


class RunMismatchError(ValueError):
    """A checkpoint written by a run with other settings; the message lists each difference."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_step(path: Path) -> int | None:
    """The step in a ``checkpoint-<step>`` folder name, or None for any other name."""
    match = NAME.fullmatch(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def write_manifest(folder: Path, step: int, fingerprint: dict, final: bool) -> None:
    """Write ``folder/manifest.json``: the checksum and size of each file, and the run."""
    files = {
        n: {"sha256": sha256_of(folder / n), "bytes": (folder / n).stat().st_size} for n in FILES
    }
    manifest = {"step": step, "final": final, "files": files, "fingerprint": fingerprint}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify(folder: Path) -> dict:
    """Check a checkpoint folder against its manifest.

    Returns:
        The manifest (``step``, ``final``, ``files``, ``fingerprint``).
    Raises:
        CheckpointError: naming the folder and the file that is missing, cut short or changed.
    """
    where = folder / MANIFEST
    if not where.is_file():
        raise CheckpointError(f"{where}: missing (an incomplete or foreign checkpoint folder)")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: unreadable ({type(err).__name__}: {err})") from None
    for name in FILES:
        path, entry = folder / name, listed.get(name)
        if entry is None:
            raise CheckpointError(f"{where}: does not list {name}")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {entry['bytes']}")
        if sha256_of(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: checksum differs from the manifest (the file changed)")
    return manifest


def _lora_settings(model: nn.Module) -> dict:
    """r, alpha, dropout and target module names of the LoRA layers (either twin)."""
    ranks, alphas, dropouts, targets = set(), set(), set(), set()
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "r"):
            continue
        targets.add(name.rsplit(".", 1)[-1])
        if isinstance(module.r, dict):  # peft: one entry per adapter name
            ranks.update(module.r.values())
            alphas.update(module.lora_alpha.values())
            drops = module.lora_dropout.values()
        else:  # the naive twin
            ranks.add(module.r)
            alphas.add(module.alpha)
            drops = [module.lora_dropout]
        dropouts.update(float(getattr(d, "p", 0.0)) for d in drops)
    return {
        "lora_r": sorted(ranks),
        "lora_alpha": sorted(float(a) for a in alphas),
        "lora_dropout": sorted(dropouts),
        "target_modules": sorted(targets),
    }


def _twin(model: nn.Module) -> str:
    """Which twin built the model: "library" (peft), "naive" (the course's own) or "other"."""
    modules = {type(m).__module__ for m in model.modules()}
    if any(m.startswith("peft.") for m in modules):
        return "library"
    return "naive" if any(m.startswith("helpers.") for m in modules) else "other"


def _short_hash(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    """``sha256_of``, remembered for a file whose size, mtime and inode are unchanged (a resume
    in the same session does not read gigabytes twice)."""
    return sha256_of(path)


def _weights_hashes(folder: Path) -> list:
    """Name, size and sha256 of every weight file, streamed in 1 MiB chunks: every byte of the
    base weights counts (a tensor changed in the middle of a file changes the hash). A file of
    the hub's cache that links to a blob named by its sha256 (how ``huggingface_hub`` stores
    files kept in LFS) is keyed by that name: the hash the hub published, not read again."""
    hashes = []
    for path in sorted(folder.glob("*.safetensors")):
        target = path.resolve()
        if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", target.name):
            digest = target.name  # the hub's sha256 of the file
        else:
            info = target.stat()
            digest = _file_sha256(target, info.st_size, info.st_mtime_ns, info.st_ino)
        hashes.append([path.name, target.stat().st_size, digest])
    return hashes


def _model_identity(model: nn.Module) -> dict:
    """The model id (a local folder by its name, so a moved folder still matches) and a hash of
    its config and weight files (all their bytes, ``_weights_hashes``). A hub model is found
    in the local cache at the revision it was loaded from (``config._commit_hash``), which is
    part of the hash."""
    config = getattr(model, "config", None)
    model_id = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    settings = config.to_dict() if config is not None else {}
    revision = getattr(config, "_commit_hash", None)
    for volatile in ("_name_or_path", "transformers_version", "use_cache", "_commit_hash"):
        settings.pop(volatile, None)
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        model_id, weights = f"{folder.name} (a local folder)", _weights_hashes(folder)
    else:
        weights = [revision, *_cached_weights(model_id, revision)]
    return {"model": model_id, "model_config": _short_hash([settings, weights])}


def _cached_weights(repo_id: str, revision: str | None) -> list:
    """``_weights_hashes`` of a hub model's snapshot in the local cache (empty if not there)."""
    if not revision:
        return []
    from huggingface_hub import try_to_load_from_cache

    try:
        config_file = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a hub id (huggingface_hub's validation errors are ValueErrors)
        return []
    return _weights_hashes(Path(config_file).parent) if isinstance(config_file, str) else []


def _data_identity(dataset) -> dict:
    """The data's file (when ``load_jsonl`` read it) and a hash of its records."""
    records = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    info = getattr(dataset, "info", None)
    source = getattr(info, "description", "") or ""
    return {
        # the name only: the same data in a moved folder is the same data (the hash decides)
        "data_file": Path(source[6:]).name if source.startswith("file: ") else None,
        "data": f"{len(records)} records, sha256 {_short_hash(records)}",
    }


def run_fingerprint(model: nn.Module, dataset, **settings) -> dict:
    """Everything that decides what a resumed run computes, as JSON-ready values.

    Args:
        model: the model being trained (either twin).
        dataset: its training records.
        **settings: the run's other settings (seed, lr, schedule, micro_batch_size, ...).
    Returns:
        A flat dict; two runs with equal fingerprints compute the same steps.
    """
    trainable = [(n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return {
        **_model_identity(model),
        "twin": _twin(model),
        **_lora_settings(model),
        "trainable": f"{len(trainable)} tensors, layout {_short_hash(trainable)}",
        **_data_identity(dataset),
        **settings,
    }


def compare_fingerprints(saved: dict, now: dict) -> dict[str, tuple]:
    """The settings that differ, as ``{name: (checkpoint's value, this run's value)}``."""
    names = sorted(set(saved) | set(now))
    return {n: (saved.get(n), now.get(n)) for n in names if saved.get(n) != now.get(n)}


def mismatch_message(folder: Path, differences: dict[str, tuple], allowed: set[str]) -> str:
    """The error for a resume whose settings differ from the checkpoint's."""
    lines = [f"{folder} was written by a run with other settings:"]
    lines += [f"  {n}: checkpoint {a!r}, this run {b!r}" for n, (a, b) in differences.items()]
    fixed = [n for n in differences if n in STRUCTURAL]
    changeable = [n for n in differences if n not in STRUCTURAL and n not in allowed]
    lines.append(f"To start fresh, delete {folder.parent} or give another checkpoint folder.")
    if changeable and not fixed:
        lines.append(
            f"To continue this run with the new values on purpose, pass "
            f"allow_changes={tuple(changeable)!r}."
        )
    elif fixed:
        lines.append(f"{', '.join(fixed)} cannot change within a run: the tensors differ.")
    return "\n".join(lines)


def checkpoint_bytes(shape: ModelShape, lora_r: int, target_modules: tuple[str, ...]) -> int:
    """Predicted bytes of one checkpoint of a LoRA run: fp32 adapter + AdamW's two moments.

    The trainer state (losses, RNG states) adds a few tens of KiB, left out.

    Args:
        shape: the base model's sizes (``helpers.memory.naive.MODELS[...]`` or from a config).
        lora_r: the LoRA rank; target_modules: the adapted linear layers.
    Returns:
        Bytes: 4 (the adapter value) + 8 (its two moments) per trainable value.
    """
    run = RunSpec("lora", lora_r=lora_r, target_modules=tuple(target_modules))
    values = sum(trainable_sizes(shape, run))
    return values * (4 + ADAMW_BYTES_PER_VALUE)


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files in a folder (one checkpoint measured on disk)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def storage_bytes(bytes_per_checkpoint: int, keep_last: int | None, n_saves: int) -> int:
    """Disk a run's checkpoints take at most: ``keep_last`` kept plus the final one.

    Args:
        bytes_per_checkpoint: one checkpoint (``checkpoint_bytes`` or ``folder_bytes``).
        keep_last: checkpoints kept besides the final one (None: all are kept).
        n_saves: checkpoints the run writes (``ceil(max_steps / save_every)``).
    """
    kept = n_saves if keep_last is None else min(n_saves, keep_last + 1)
    return bytes_per_checkpoint * kept


# Qwen/Qwen2.5-7B config.json (hidden, intermediate, layers, heads, kv heads, head size, vocab):
# the t4-8b profile's model, which the memory planner's table does not list.
_MORE_SHAPES = {
    "Qwen2.5-7B": ModelShape(
        "Qwen2.5-7B",
        3584,
        18944,
        28,
        28,
        4,
        128,
        152064,
        False,
        True,
        "Qwen/Qwen2.5-7B config.json on the Hugging Face hub",
    ),  # fmt: skip
}


def model_shape(model_id: str) -> ModelShape:
    """The sizes of a profile's model: read from a local folder's config, else the planner's
    table (``helpers.memory.naive.MODELS``, matched by name, e.g. Qwen/Qwen2.5-1.5B-Instruct).

    Raises:
        ValueError: neither a local model folder nor a model the table knows.
    """
    folder = Path(model_id).expanduser()
    if (folder / "config.json").is_file():
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(folder), folder.name)
    for name, shape in {**MODELS, **_MORE_SHAPES}.items():
        if name.lower() in model_id.lower():
            return shape
    raise ValueError(f"{model_id}: no local config.json and not one of {sorted(MODELS)}")


def run_storage(profile, max_steps: int, save_every: int, keep_last: int | None = 2) -> dict:
    """How much disk a run's checkpoints take, for a profile (``helpers.profiles.Profile``).

    Returns:
        ``bytes_per_checkpoint`` (predicted), ``n_saves``, ``kept`` (at most, the final one
        included), ``total_bytes`` (kept x per checkpoint) and ``unpruned_bytes`` (all saves).
    """
    per = checkpoint_bytes(model_shape(profile.model_id), profile.lora_r, profile.target_modules)
    n_saves = math.ceil(max_steps / save_every)
    total = storage_bytes(per, keep_last, n_saves)
    return {
        "bytes_per_checkpoint": per,
        "n_saves": n_saves,
        "kept": total // per,
        "total_bytes": total,
        "unpruned_bytes": per * n_saves,
    }
