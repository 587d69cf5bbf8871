"""Shape twins: randomly initialised models with exactly the config of each GPU profile's model.

A twin runs a GPU profile with no model hub: its memory and time are real, its quality numbers
mean nothing (random weights). Each twin is written into ``build/shapes/<profile>/``:
``config.json`` (the published config's sizes), safetensors shards written one at a time (the
7B twin never needs more than one shard, about 2 GiB, in host memory), and a tokenizer: the
course's tiny BPE tokenizer with its vocabulary padded to the model's embedding rows, so that
``len(tokenizer)`` equals the real vocabulary size (the padding entries are never produced).

    python -m helpers.shapes build t4          # build/shapes/t4 (Qwen2.5-1.5B's config)
    python -m helpers.shapes build all         # every GPU profile
    python -m helpers.shapes list              # the profiles and their models

Point a profile at a twin with the ``model_id`` override:
``resolve_profile("t4", model_id="build/shapes/t4")``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from helpers.paths import TINY_MODEL_DIR, build_dir

TWIN_MARKER = "shape_twin.json"
SHARD_BYTES = 2 * 2**30
QWEN_ENDOFTEXT_ID = 151643
_SOURCE = "config.json of Qwen/{} on the Hugging Face hub (values copied, not downloaded)"
# The published config.json values that fix every tensor's shape (and RoPE/RMSNorm constants).
# Qwen2.5-0.5B/1.5B: 151,936 embedding rows, tied head; 7B: 152,064 rows, untied head.
QWEN25 = {
    "Qwen2.5-0.5B-Instruct": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen2.5-1.5B-Instruct": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen2.5-7B-Instruct": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
}  # fmt: skip
COMMON = dict(
    model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
    max_position_embeddings=32768, attention_dropout=0.0, use_sliding_window=False,
    initializer_range=0.02,
)  # fmt: skip


def twin_dir(profile_name: str) -> Path:
    """Where ``build`` writes a profile's twin: ``build/shapes/<profile>``."""
    return build_dir() / "shapes" / profile_name


def is_twin(model_id: str) -> bool:
    """True when ``model_id`` is a folder holding a shape twin (random weights)."""
    return (Path(model_id) / TWIN_MARKER).is_file()


def twin_notice(model_id: str) -> str | None:
    """The sentence a chapter prints when it runs on a twin; None for a real model."""
    if not is_twin(model_id):
        return None
    info = json.loads((Path(model_id) / TWIN_MARKER).read_text())
    return (
        f"This run uses a shape twin of {info['model']}: random weights with the real "
        "config. Its memory use and step times are real; every quality number (loss, "
        "accuracy, perplexity, generated text) is meaningless."
    )


def twin_config(model_name: str):
    """A transformers Qwen2Config with the published sizes of ``model_name``.

    Raises:
        ValueError: a model with no published config in ``QWEN25``.
    """
    from transformers import Qwen2Config

    if model_name not in QWEN25:
        raise ValueError(f"no published config for {model_name!r}; known: {sorted(QWEN25)}")
    tok = _tiny_tokenizer_ids()
    return Qwen2Config(**QWEN25[model_name], **COMMON, bos_token_id=None, dtype="bfloat16", **tok)


def _tiny_tokenizer_ids() -> dict:
    """The special token ids of the tokenizer the twin ships (the course's tiny one)."""
    config = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    return {"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]}


def _init(name: str, shape: torch.Size, dtype: torch.dtype, generator: torch.Generator):
    """One random tensor as transformers initialises it: norms 1, biases 0, the rest
    N(0, 0.02), drawn in blocks of rows so no fp32 copy of a whole matrix is ever held."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    for start in range(0, shape[0], 4096):
        block = out[start : start + 4096]
        block.copy_(torch.randn(block.shape, generator=generator) * COMMON["initializer_range"])
    return out


def _shard_plan(specs: list[tuple[str, torch.Size]], itemsize: int) -> list[list[str]]:
    """Group the tensors, in order, into shards of at most SHARD_BYTES (one tensor may be more)."""
    shards, size = [[]], 0
    for name, shape in specs:
        nbytes = itemsize * shape.numel()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(config, out: Path, seed: int = 0, dtype=torch.bfloat16) -> int:
    """Write random weights for ``config`` into ``out`` shard by shard (with the index).

    The model is built on the meta device (no memory) only to list its tensors' names and
    shapes (tied weights once); each shard is generated, saved and freed before the next.

    Returns:
        Total bytes of the weights written.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    specs = [(name, p.shape) for name, p in model.named_parameters()]
    shapes = dict(specs)
    plan = _shard_plan(specs, torch.finfo(dtype).bits // 8)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for k, names in enumerate(plan, start=1):
        file = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        shard = {name: _init(name, shapes[name], dtype, generator) for name in names}
        save_file(shard, str(out / file), metadata={"format": "pt"})
        total += sum(t.nbytes for t in shard.values())
        weight_map |= dict.fromkeys(names, file)
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """The tiny model's tokenizer, its vocabulary padded with never-produced entries to
    ``vocab_size`` (the twin's embedding rows), so ``len(tokenizer) == vocab_size``."""
    spec = json.loads((TINY_MODEL_DIR / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    used = max([*vocab.values(), *(t["id"] for t in spec["added_tokens"])]) + 1
    if used > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {used}")
    vocab |= {f"<|twin_unused_{i}|>": i for i in range(used, vocab_size)}
    # transformers loads a qwen2 model's tokenizer as Qwen2Tokenizer, which adds
    # "<|endoftext|>" (Qwen's id 151643) unless the vocabulary has it: give it that id
    if vocab_size > used:
        endoftext = QWEN_ENDOFTEXT_ID if QWEN_ENDOFTEXT_ID < vocab_size else vocab_size - 1
        del vocab[f"<|twin_unused_{endoftext}|>"]
        vocab["<|endoftext|>"] = endoftext
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (TINY_MODEL_DIR / name).is_file():
            shutil.copy(TINY_MODEL_DIR / name, out / name)


def build_twin(model_name: str, out: Path, seed: int = 0) -> Path:
    """Write the shape twin of ``model_name`` (a key of ``QWEN25``) into ``out``.

    Written into ``<out>.partial`` and renamed when complete: an interrupted build leaves no
    half-written twin behind at ``out``.
    """
    config = twin_config(model_name)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        total = write_weights(config, partial, seed)
        config.save_pretrained(partial)
        write_tokenizer(partial, config.vocab_size)
        marker = {"model": f"Qwen/{model_name}", "source": _SOURCE.format(model_name)}
        marker |= {"seed": seed, "weights_bytes": total}
        (partial / TWIN_MARKER).write_text(json.dumps(marker, indent=1))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def profile_model(profile_name: str) -> str:
    """The ``QWEN25`` key of a GPU profile's model. Raises ValueError for others."""
    from helpers.profiles import PROFILES

    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; profiles: {sorted(PROFILES)}")
    name = PROFILES[profile_name].model_id.split("/")[-1]
    if name not in QWEN25:
        raise ValueError(f"profile {profile_name!r} uses {name!r}, which has no shape twin")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.shapes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="write a profile's twin into build/shapes/")
    p_build.add_argument("profile", help="a GPU profile name, or 'all'")
    p_build.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="the GPU profiles and the model each twin copies")
    args = parser.parse_args(argv)
    from helpers.profiles import PROFILES

    gpu = [n for n, p in PROFILES.items() if p.model_id.split("/")[-1] in QWEN25]
    if args.command == "list":
        for name in gpu:
            print(f"{name:10s} {PROFILES[name].model_id:30s} -> {twin_dir(name)}")
        return 0
    names = gpu if args.profile == "all" else [args.profile]
    for name in names:
        out = build_twin(profile_model(name), twin_dir(name), args.seed)
        print(f"{name}: {out} (use it with model_id={str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
