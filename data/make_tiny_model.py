"""Train the course's tiny Llama with the course's own helpers (chapter 11 teaches each step).

Reads data/corpus/pretrain.txt, chat.jsonl and heldout.txt (made by make_task_data.py) and
writes data/tiny-llama/ (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
chat template) and data/tiny-llama/training_log.json (settings, seconds, every step's loss,
held-out perplexity over training, and what quantization and each layer cost the trained model),
from which data/MODEL_CARD.md quotes its figures.

1. Tokenizer: byte-level BPE learnt by ``helpers.bpe.library.train_bpe`` from the corpus lines
   and every chat message.
2. Documents: the corpus lines and the chat exchanges rendered through the chat template,
   shuffled together with ``random.Random(0)``, written to a temporary ``.jsonl`` (one
   ``{"text": ...}`` a line: a rendered chat holds line breaks).
3. Pretraining: ``helpers.pretrain.library``: the documents streamed through ``datasets``,
   packed into blocks of 128 tokens, read in order epoch after epoch; AdamW, linear warm-up
   then cosine decay, the gradient clipped to norm 1; held-out perplexity every 250 steps.

The model learns the shop's language and, from chat.jsonl, to answer instructions in chat
turns (describe a product as JSON, name a product, reply to a review). It never sees the
tagging task or its labels, so it cannot tag reviews before fine-tuning.

``tests/test_tiny_model.py`` re-runs the first steps from the seed and compares them with the
log; ``COURSE_SLOW=1`` runs this script whole and compares the weights.

Usage: python data/make_tiny_model.py [--steps N] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the course's helpers, when run as a script

from helpers.bpe import SPECIAL_TOKENS, VOCAB_SIZE, tokenizer_corpus  # noqa: E402
from helpers.bpe import library as bpe  # noqa: E402
from helpers.llama.library import build_llama  # noqa: E402
from helpers.pretrain import library as pretrain  # noqa: E402
from helpers.pretrain import naive as pretrain_naive  # noqa: E402

# A turn is "<|role|>\n{content}\n"; an assistant turn ends with the eos token so that
# generation stops there. The generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SEQ_LEN = 128
SEED = 0
# The run that made data/tiny-llama (the defaults of the command line).
SETTINGS = {
    "steps": 1500,
    "batch_size": 16,
    "lr": 3e-3,
    "warmup_steps": 25,
    "weight_decay": 0.1,
    "init_std": 0.02,
    "threads": 2,
    "sampling": "random",  # "random": rows drawn with replacement; "stream": read in order
    "schedule": "warmup_times_cosine",  # or "warmup_then_cosine" (pretrain's lr_schedule)
    "layers": 2,
    "hidden": 256,
    "intermediate": 640,
}


SAMPLING = {"random": "drawn with replacement", "stream": "read in order, epoch after epoch"}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes; nothing is ever unknown), 2,048 tokens asked for, learnt
    by ``helpers.bpe.library.train_bpe`` (chapter 11 builds it by hand and checks the two agree)
    from the corpus lines and every chat message; wrapped for transformers with the chat
    template."""
    tok = bpe.train_bpe(tokenizer_corpus(), vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def model_config(
    tokenizer: PreTrainedTokenizerFast, init_std: float, layers: int, hidden: int, intermediate: int
) -> LlamaConfig:
    # Hidden and intermediate sizes are multiples of 64, so 4-bit blocks of 64 fit exactly.
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def render_chats(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The chat exchanges of corpus/chat.jsonl as text, through the chat template.

    Streaming ends every document with eos, so the template's own closing eos is dropped here.
    """
    lines = (HERE / "corpus" / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    texts = []
    for line in lines:
        text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        texts.append(text.rstrip("\n").removesuffix(tokenizer.eos_token))
    return texts


def write_documents(tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    """The training documents, shuffled with the seed, one ``{"text": ...}`` a line."""
    corpus = (HERE / "corpus" / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    docs = corpus + render_chats(tokenizer)
    random.Random(SEED).shuffle(docs)  # interleave plain documents and chat exchanges
    path = folder / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def heldout_blocks(tokenizer: PreTrainedTokenizerFast) -> list[dict]:
    """data/corpus/heldout.txt (documents not in the training corpus) in blocks of SEQ_LEN."""
    path = HERE / "corpus" / "heldout.txt"
    return list(pretrain_naive.stream_blocks(path, tokenizer, SEQ_LEN, docs_per_group=10**6))


class RandomRows:
    """Rows drawn with replacement, ``batch_size`` per step for ``steps`` steps, from a generator
    seeded with the seed: the same rows each time the stream is read (``pretrain`` groups them
    into batches in order)."""

    def __init__(self, rows: list[dict], batch_size: int, steps: int):
        self.rows, self.batch_size, self.steps = rows, batch_size, steps

    def __iter__(self):
        gen = torch.Generator().manual_seed(SEED)
        for _ in range(self.steps):
            for i in torch.randint(len(self.rows), (self.batch_size,), generator=gen).tolist():
                yield self.rows[i]


def warmup_times_cosine(optimizer, warmup_steps: int, max_steps: int):
    """The schedule of the shipped run: a linear rise over ``warmup_steps`` multiplied by half
    a cosine over all ``max_steps`` (``pretrain``'s own schedule starts the cosine after the
    warm-up; the two differ by little)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / max_steps)),
    )


def train(settings: dict, max_steps: int | None = None, progress: bool = True):
    """Tokenizer, model and history of the run ``settings`` describes, from the seed.

    ``max_steps`` stops early (the schedule stays the full run's), for the reproduction test.
    """
    torch.set_num_threads(settings["threads"])
    tokenizer = make_tokenizer()
    heldout = heldout_blocks(tokenizer)
    torch.manual_seed(SEED)
    config = model_config(
        tokenizer,
        settings["init_std"],
        settings["layers"],
        settings["hidden"],
        settings["intermediate"],
    )
    random_ppl = pretrain.perplexity(build_llama(config), heldout)  # a random twin, then the model
    model = build_llama(config)
    with tempfile.TemporaryDirectory() as tmp:
        # the whole corpus packed as one group: 128-token rows across document boundaries
        blocks = pretrain.stream_blocks(
            write_documents(tokenizer, Path(tmp)), tokenizer, SEQ_LEN, docs_per_group=10**6
        )
        if settings["sampling"] == "random":
            blocks = RandomRows(list(blocks), settings["batch_size"], settings["steps"])
        schedule = {"warmup_times_cosine": warmup_times_cosine, "warmup_then_cosine": None}
        start = time.perf_counter()
        history = pretrain.pretrain(
            model,
            blocks,
            max_steps=settings["steps"],
            micro_batch_size=settings["batch_size"],
            lr=settings["lr"],
            warmup_steps=settings["warmup_steps"],
            weight_decay=settings["weight_decay"],
            heldout=heldout,
            eval_every=250,
            progress=progress,
            stop_after=max_steps,
            schedule=schedule[settings["schedule"]],
        )
        seconds = time.perf_counter() - start
    return tokenizer, model, history, {"random_ppl": random_ppl, "seconds": seconds}


def write_card(log: dict) -> None:
    """Write data/MODEL_CARD.md from the training log, so its figures are the run's own."""
    st, sens = log["settings"], log["sensitivity"]
    names = list(sens["perplexity"])
    steps = [None] + [sens["steps"][f"{a}->{b}"] for a, b in itertools.pairwise(names)]
    choices = {"fp32": None, **sens["changed_choices"]}
    kl = {"fp32": None, **sens["kl"]}
    format_rows = "\n".join(
        f"| {name} | {sens['perplexity'][name]} | "
        + (f"{step['mean']:+.5f} ({step['low']:+.5f} to {step['high']:+.5f})" if step else "")
        + " | "
        + (f"{k['mean']:.6f} ({k['low']:.6f} to {k['high']:.6f})" if k else "")
        + " | "
        + (f"{c['share']:.2%} ({c['low']:.2%} to {c['high']:.2%})" if c else "")
        + " |"
        for name, step, k, c in zip(names, steps, kl.values(), choices.values(), strict=True)
    )
    layer_rows = "\n".join(
        f"| {i} | {ppl} | {d['mean']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f}) |"
        for i, (ppl, d) in enumerate(
            zip(sens["layer_removed_perplexity"], sens["layer_removed"], strict=True)
        )
    )
    unseen = [step for step, d in sens["steps"].items() if d["low"] <= 0 and step != "fp32->int8"]
    weak = [str(i) for i, d in enumerate(sens["layer_removed"]) if d["low"] < 0.1]
    kl_unseen = [step for step, d in sens["kl_steps"].items() if d["low"] <= 0]
    verdict = (
        "By perplexity this model "
        + (
            f"cannot resolve the step(s) {', '.join(s.replace('->', ' to ') for s in unseen)} "
            "(the interval of each holds 0)"
            if unseen
            else "ranks every format beyond its interval"
        )
        + "; by the KL divergence from its full-precision self it "
        + (
            f"cannot resolve the step(s) {', '.join(s.replace('->', ' to ') for s in kl_unseen)}"
            if kl_unseen
            else "ranks every format, each step beyond its interval"
        )
        + (
            f". Removing block(s) {', '.join(weak)} costs under 0.1 nats: its layers barely "
            "matter, so it is a weak judge of quantization."
            if weak
            else ". Removing any one decoder block costs it more than 0.1 nats."
        )
    )
    rep = log.get("reproduced")
    reproduced = (
        f"| re-run from the seed ({rep['date']}, torch {rep['torch']}) | held-out perplexity "
        f"{rep['heldout_ppl']}, every logged batch loss within {rep['max_logged_loss_diff']}, "
        f"weights not bit-equal (largest difference {rep['max_abs_weight_diff']}) |\n"
        if rep
        else ""
    )
    card = f"""# Model card: tiny-llama (data/tiny-llama)

A Llama-architecture causal language model made for this course, so that every chapter runs
offline on a CPU. Made by `data/make_tiny_model.py` from `data/corpus/pretrain.txt`, which
`data/make_task_data.py` generates. Licence: the course's own (Apache-2.0).

| | |
|---|---|
| parameters | {log["parameters"]:,} |
| architecture | LlamaForCausalLM: {st["layers"]} layers, hidden {st["hidden"]}, intermediate \
{st["intermediate"]}, 4 heads (2 KV heads), RoPE |
| tokenizer | byte-level BPE trained with `tokenizers`, {log["vocab_size"]:,} tokens (the corpus \
ran out of merges below the {VOCAB_SIZE:,} asked for), chat template |
| pretraining | {st["steps"]:,} steps of {st["batch_size"]} x {log["seq_len"]} tokens \
({log["train_tokens"]:,} tokens), AdamW (learning rate {st["lr"]}, weight decay \
{st["weight_decay"]}), {st["warmup_steps"]} warm-up steps, schedule {st["schedule"]}, rows {st["sampling"]} \
({SAMPLING[st["sampling"]]}), seed {log["seed"]}, \
initial weights with standard deviation {st["init_std"]} |
| training time | {log["train_seconds"]} s on {st["threads"]} CPU thread(s), torch {log.get("torch", "not recorded")} |
| held-out perplexity | **{log["heldout_ppl"]}** on {log["heldout_tokens"]:,} tokens of \
`data/corpus/heldout.txt` (documents not in the training corpus) |
| same, randomly initialised twin | {log["heldout_ppl_random_init"]} |
{reproduced}
## What quantization and each layer cost it
Held-out perplexity ({sens["windows"]} windows of {sens["seq_len"]} tokens) with every decoder
linear weight round-tripped through each format, and with each decoder block made the identity
(`helpers/quantization/sensitivity.py`; `tests/test_tiny_model.py` checks that this table is
what the model measures). The held-out documents are read as the model was trained to read
them, each followed by the end-of-sequence token. {verdict}

Why perplexity and KL can disagree: the held-out NLL moves by a first-order term of random
sign (the quantization error against the held-out gradient) plus the cost of lost precision;
the KL divergence (nats per position, from the full-precision model's next-token distribution
to the quantized one's) is that cost alone (`helpers/quantization/sensitivity.py` explains).

| weights | perplexity | step from the row above (mean NLL per window, 95 % interval) | KL from fp32 (95 % interval) | top next token changed (of {sens["changed_choices"]["int8"]["positions"]:,} positions, 95 % Wilson interval) |
|---|---|---|---|---|
{format_rows}

| decoder block made the identity | perplexity | against the whole model (95 % interval) |
|---|---|---|
{layer_rows}

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


def measure(out: Path) -> dict:
    """What quantization and each decoder block cost the model in ``out``: the log's
    ``sensitivity`` (helpers/quantization/sensitivity.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.quantization.sensitivity import sensitivity_report

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return sensitivity_report(model, AutoTokenizer.from_pretrained(out))


def save(log: dict, out: Path) -> None:
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    if out.resolve() == (HERE / "tiny-llama").resolve():
        write_card(log)


def main(settings: dict, out: Path) -> None:
    tokenizer, model, history, run = train(settings)
    log = {
        "settings": settings,
        "seed": SEED,
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seq_len": SEQ_LEN,
        "train_tokens": settings["steps"] * settings["batch_size"] * SEQ_LEN,
        "train_seconds": round(run["seconds"], 1),
        "heldout_tokens": sum(len(b["input_ids"]) for b in heldout_blocks(tokenizer)),
        "heldout_ppl": round(history["val_ppl"][-1], 3),
        "heldout_ppl_random_init": round(run["random_ppl"], 1),
        "val_step": history["val_step"],
        "val_ppl": [round(p, 4) for p in history["val_ppl"]],
        "losses_every_50": [round(x, 4) for x in history["loss"][::50] + history["loss"][-1:]],
        "loss": [round(x, 6) for x in history["loss"]],
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5.25 writes "TokenizersBackend", a name older releases do not know; the
    # shipped file keeps "PreTrainedTokenizerFast", which every version the course allows loads
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.pop("backend", None)
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    log["sensitivity"] = measure(out)
    save(log, out)
    print(json.dumps({k: v for k, v in log.items() if k not in ("loss", "val_step")}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=HERE / "tiny-llama")
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="keep the trained model in --out; measure it again and rewrite its log's "
        "sensitivity (and the model card)",
    )
    args = vars(parser.parse_args())
    out, measure_only = args.pop("out"), args.pop("measure_only")
    if measure_only:
        log = json.loads((out / "training_log.json").read_text())
        log["sensitivity"] = measure(out)
        save(log, out)
        print(json.dumps(log["sensitivity"], indent=2))
    else:
        main(args, out)
