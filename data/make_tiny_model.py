"""Train the course's tiny Llama: a byte-level BPE tokenizer, then a short CPU pretraining.

Reads data/corpus/pretrain.txt and chat.jsonl (made by make_task_data.py), writes data/tiny-llama/
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json, chat template) and
data/tiny-llama/training_log.json (steps, seconds, held-out perplexity of the trained model and
of a randomly initialised twin), from which data/MODEL_CARD.md quotes its figures.

The model learns the shop's language and, from chat.jsonl, to answer instructions in chat
turns (describe a product as JSON, name a product, reply to a review). It never sees the
tagging task or its labels, so it cannot tag reviews before fine-tuning.

Usage: python data/make_tiny_model.py [--steps 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
# A turn is "<|role|>\n{content}\n"; an assistant turn ends with the eos token so that
# generation stops there. The generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
VOCAB_SIZE = 2048
SEQ_LEN = 128


def train_tokenizer(lines: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes; nothing is ever unknown), vocabulary of 2,048."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    # Hidden and intermediate sizes are multiples of 64, so 4-bit blocks of 64 fit exactly.
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def pack(tokenizer: PreTrainedTokenizerFast, lines: list[str]) -> torch.Tensor:
    """Concatenate documents, each followed by eos, and cut into rows of SEQ_LEN tokens."""
    ids: list[int] = []
    for ids_line in tokenizer(lines)["input_ids"]:
        ids.extend(ids_line + [tokenizer.eos_token_id])
    n_rows = len(ids) // SEQ_LEN
    return torch.tensor(ids[: n_rows * SEQ_LEN]).view(n_rows, SEQ_LEN)  # (rows, T)


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int = 32) -> float:
    """Token-weighted perplexity: exp of the mean loss over every predicted token."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - len(batch)  # each row predicts T - 1 tokens
        total, count = total + loss.item() * n, count + n
    return math.exp(total / count)


def pretrain(model: LlamaForCausalLM, rows: torch.Tensor, steps: int, batch_size: int) -> list:
    """AdamW with linear warm-up and cosine decay; returns the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="pretraining"):
        batch = rows[torch.randint(len(rows), (batch_size,), generator=gen)]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    return losses


def write_card(log: dict) -> None:
    """Write data/MODEL_CARD.md from the training log, so its figures are the run's own."""
    card = f"""# Model card: tiny-llama (data/tiny-llama)

A Llama-architecture causal language model made for this course, so that every chapter runs
offline on a CPU. Made by `data/make_tiny_model.py` from `data/corpus/pretrain.txt`, which
`data/make_task_data.py` generates. Licence: the course's own (Apache-2.0).

| | |
|---|---|
| parameters | {log["parameters"]:,} |
| architecture | LlamaForCausalLM: 4 layers, hidden 256, intermediate 640, 4 heads (2 KV heads), RoPE |
| tokenizer | byte-level BPE trained with `tokenizers`, {log["vocab_size"]:,} tokens (the corpus \
ran out of merges below the {VOCAB_SIZE:,} asked for), chat template |
| pretraining | {log["steps"]} steps of {log["batch_size"]} x {log["seq_len"]} tokens \
({log["train_tokens"]:,} tokens), AdamW, cosine schedule |
| training time | {log["train_seconds"]} s on {log["threads"]} CPU thread(s) |
| held-out perplexity | **{log["heldout_ppl"]}** on {log["heldout_tokens"]:,} tokens of \
`data/corpus/heldout.txt` (documents not in the training corpus) |
| same, randomly initialised twin | {log["heldout_ppl_random_init"]} |

## Intended use
Teaching: quantization, LoRA, QLoRA, memory and evaluation chapters run on it in seconds. It
knows the shop's language (reviews, replies, product listings) and follows a few instructions
in chat turns (`data/corpus/chat.jsonl`): describe a product as JSON, name the product a review
mentions, reply to a review, and copy a support note whose labels are written out into JSON.
It has never been asked to read a review and decide its labels, so before fine-tuning it tags
reviews no better than chance (chapter 00 measures it) and fine-tuning shows a real
before/after difference. It is not useful for anything else.

## Limitations
Trained on synthetic, templated English text of one narrow domain. It writes fluent-looking
shop text and nothing more; no facts, no safety tuning.
"""
    (HERE / "MODEL_CARD.md").write_text(card)


def render_chats(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The chat exchanges of corpus/chat.jsonl as text, through the chat template.

    ``pack`` ends every document with eos, so the template's own closing eos is dropped here.
    """
    lines = (HERE / "corpus" / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    texts = []
    for line in lines:
        text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        texts.append(text.rstrip("\n").removesuffix(tokenizer.eos_token))
    return texts


def main(steps: int, batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    corpus = (HERE / "corpus" / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    heldout = (HERE / "corpus" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    chat_lines = (HERE / "corpus" / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    chat_text = [m["content"] for line in chat_lines for m in json.loads(line)["messages"]]
    tokenizer = train_tokenizer(corpus + chat_text)
    corpus = corpus + render_chats(tokenizer)
    random.Random(0).shuffle(corpus)  # interleave plain documents and chat exchanges
    train_rows, heldout_rows = pack(tokenizer, corpus), pack(tokenizer, heldout)
    config = model_config(tokenizer)
    random_ppl = perplexity(LlamaForCausalLM(config), heldout_rows)
    model = LlamaForCausalLM(config)
    start = time.perf_counter()
    losses = pretrain(model, train_rows, steps, batch_size)
    seconds = time.perf_counter() - start
    log = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": SEQ_LEN,
        "threads": threads,
        "train_tokens": steps * batch_size * SEQ_LEN,
        "train_seconds": round(seconds, 1),
        "heldout_tokens": heldout_rows.numel(),
        "heldout_ppl": round(perplexity(model, heldout_rows), 3),
        "heldout_ppl_random_init": round(random_ppl, 1),
        "losses_every_50": losses[::50] + [losses[-1]],
    }
    out = HERE / "tiny-llama"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    write_card(log)
    print(json.dumps({k: v for k, v in log.items() if k != "losses_every_50"}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    main(args.steps, args.batch_size, args.threads)
