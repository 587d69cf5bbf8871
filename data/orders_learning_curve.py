"""What the shipped tiny model learns from data/orders, by run length: the table of
data/orders/DATA_CARD.md ("What the tiny model learns from it").

One fresh run per length, as chapter 09 trains: the course loop ``helpers.sft.naive.sft_train``
with the tiny profile's LoRA settings (r=8, alpha=16, all linear layers, lr 3e-3, micro-batch
8, seed 0), then greedy answers to the first 50 test records (those chapter 09 scores), scored
field by field with ``helpers.sft.byod.score``. The majority baseline answers each field's most
common training value. Prints the table as markdown.

Usage: python data/orders_learning_curve.py [--steps 60 100 150 200 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the course's helpers, when run as a script

from helpers.data import load_jsonl  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402
from helpers.sft import SFTRun, byod  # noqa: E402
from helpers.sft import naive as sft_naive  # noqa: E402

N_EVAL = 50  # chapter 09 scores the tiny profile's eval_examples: the first 50 test records
FIELDS = ("exact_match", "action_accuracy", "product_accuracy", "quantity_accuracy")


def curve(steps: list[int]) -> list[tuple[str, dict]]:
    profile = get_profile("tiny")
    train = load_jsonl(HERE / "orders" / "train.jsonl")
    records = list(load_jsonl(HERE / "orders" / "test.jsonl").select(range(N_EVAL)))
    references = [byod.split_record(r)[1] for r in records]
    rows = [("majority baseline", byod.score(byod.majority_answers(train, N_EVAL), references))]
    for n in steps:
        model, tokenizer = load_model(profile)
        run = SFTRun.from_profile(profile, max_steps=n, seed=0)
        result = sft_naive.sft_train(model, tokenizer, train, run, progress=False)
        answers = byod.generate(result.model, tokenizer, records)
        rows.append((str(n), byod.score(answers, references)))
        print(f"{n} steps: {rows[-1][1]}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[60, 100, 150, 200, 300])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| steps | exact match | action | product | quantity |")
    print("|---|---|---|---|---|")
    for name, score in curve(args.steps):
        print(f"| {name} | " + " | ".join(f"{score[f]:.2f}" for f in FIELDS) + " |")


if __name__ == "__main__":
    main()
