"""QLoRA at the configuration of Unsloth's published T4 notebook for Qwen2.5-7B, on the 7B
shape twin: the course's loop (``helpers.train`` over ``helpers.qlora.library``) and a plain
transformers + peft loop (the model's own loss), each in a fresh process.

Unsloth's notebook (``Qwen2.5_(7B)-Alpaca.ipynb``, unslothai/notebooks, T4): r=16 on all
linear layers, micro-batch 2 x 4 accumulation, max_seq_length 2,048, gradient checkpointing,
fp16 on a T4, adamw_8bit; its stored output reports 7.89 GB peak reserved memory (as quoted
in issue 33). Here every sequence is a full 2,048 tokens (their Alpaca rows are shorter), so
these peaks are an upper bound of theirs.

    python -m tools.gpucheck.benchmark course|peft MODEL_DIR OUT.json [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

UNSLOTH = {"peak_reserved_gb": 7.89, "gpu": "Tesla T4",
           "source": "unslothai/notebooks nb/Qwen2.5_(7B)-Alpaca.ipynb, stored output"}  # fmt: skip
CONFIG = {"lora_r": 16, "lora_alpha": 16, "micro_batch_size": 2, "grad_accum_steps": 4,
          "max_seq_len": 2048, "gradient_checkpointing": True, "compute_dtype": "float16",
          "optimizer": "bitsandbytes AdamW8bit", "lr": 2e-4}  # fmt: skip
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def records(tokenizer, n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """``n`` prompt/completion records whose completion alone is over ``seq_len`` tokens
    (words drawn from the tokenizer's own vocabulary), so each trains on a full window."""
    gen = torch.Generator().manual_seed(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha()][:2000] or ["token"]
    out = []
    for _ in range(n):
        picks = torch.randint(len(words), (seq_len + 64,), generator=gen).tolist()
        out.append({"prompt": "Repeat:", "completion": " ".join(words[i] for i in picks)})
    return out


def load(model_dir: str, dtype: torch.dtype):
    """The twin in 4 bits (NF4, double quant) through the course's loader, prepared for
    k-bit training with checkpointing, r=16 adapters on every linear layer."""
    from transformers import AutoTokenizer

    from helpers.qlora import library

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = library.load_4bit(model_dir, dtype)
    model = library.prepare_for_kbit_training(model, gradient_checkpointing=True)
    model = library.add_lora(model, CONFIG["lora_r"], CONFIG["lora_alpha"], ALL_LINEAR)
    return model, tokenizer


def optimizer_for(model) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW over the adapters (Unsloth's ``adamw_8bit``)."""
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    return bnb.optim.AdamW8bit(params, lr=CONFIG["lr"])


def course_steps(model, tokenizer, data, steps: int, amp: str | None) -> None:
    """``steps`` optimizer steps through the course's loop."""
    from helpers.train import train

    train(model, tokenizer, data, max_steps=steps, micro_batch_size=CONFIG["micro_batch_size"],
          lr=CONFIG["lr"], grad_accum_steps=CONFIG["grad_accum_steps"],
          max_seq_len=CONFIG["max_seq_len"], progress=False, optimizer=optimizer_for(model),
          mixed_precision=amp)  # fmt: skip


def peft_steps(model, tokenizer, data, steps: int, amp: str | None) -> None:
    """``steps`` optimizer steps of a plain loop: the model's own mean loss, autocast and
    loss scaling in fp16, ``grad_accum_steps`` micro-batches per step."""
    from helpers.data import Collator

    collate, opt = Collator(tokenizer, CONFIG["max_seq_len"]), optimizer_for(model)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    mb, k = CONFIG["micro_batch_size"], CONFIG["grad_accum_steps"]
    model.train()
    for step in range(steps):
        for j in range(k):
            start = ((step * k + j) * mb) % max(1, len(data) - mb + 1)
            batch = {n: t.to(device) for n, t in collate(data[start : start + mb]).items()}
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp == "fp16"):
                loss = model(**batch).loss / k
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)


def run(loop: str, model_dir: str, steps: int) -> dict:
    """One variant: a warm-up step, then ``steps`` timed optimizer steps; peak reserved GiB
    and trained tokens per second."""
    cuda = torch.cuda.is_available()
    amp = "fp16" if cuda else None
    model, tokenizer = load(model_dir, torch.float16 if cuda else torch.float32)
    per_step = CONFIG["micro_batch_size"] * CONFIG["grad_accum_steps"]
    data = records(tokenizer, per_step * (steps + 1), CONFIG["max_seq_len"])
    step_fn = course_steps if loop == "course" else peft_steps
    step_fn(model, tokenizer, data[:per_step], 1, amp)  # warm-up: kernels, optimizer state
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step_fn(model, tokenizer, data[per_step:], steps, amp)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = steps * per_step * CONFIG["max_seq_len"]
    peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    return {"loop": loop, "status": "ok", "steps": steps, "seconds": round(seconds, 2),
            "train_tokens_per_s": round(tokens / seconds, 1),
            "peak_reserved_gib": round(peak, 3) if peak is not None else None,
            "peak_reserved_gb": round(peak * 2**30 / 1e9, 3) if peak is not None else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpucheck.benchmark")
    parser.add_argument("loop", choices=["course", "peft"])
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        result = run(args.loop, args.model_dir, args.steps)
    except Exception as err:  # noqa: BLE001 (recorded, and the exit status says so)
        result = {"loop": args.loop, "status": f"failed: {type(err).__name__}: {err}"[:400]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
