"""Make chapter 09's packing lesson data: records whose lengths vary as instruction data does.

Real instruction data is not of one length. In a sample of Stanford Alpaca (the 41 records at
characters 16,000 to 32,000 of ``data/alpaca_5000.json``, a 5,000-record subset of Alpaca's
52K in a public copy of github.com/tatsu-lab/stanford_alpaca), a record's instruction + input
+ output runs from 9 to 202 words: median 44, 10th percentile 17, 90th 94, and the logarithm
of the length has a standard deviation of 0.74 (a log-normal spread; measured for this course,
not published by Alpaca's authors). The course's task data (``data/task``) spans only 29 to 57
tokens, so padding it wastes little and packing it gains little.

Each record here draws a target length from that log-normal (median 44 words, log-sd 0.74,
clipped to 9..150 words so that every record fits the tiny model's 256 positions), then lists
reviews (the course task's sentence banks, ``data/make_task_data.py``) until the prompt reaches
it. The task: name each review's category, as a JSON list. One seeded generator: running the
script again writes the same bytes.

Usage: python data/make_packing_data.py [--out DIR]     # writes DIR/packing/train.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
from pathlib import Path

SEED = 88
N_RECORDS = 256
MEDIAN_WORDS, LOG_SD = 44, 0.74  # Alpaca's record length, measured (module docstring)
MIN_WORDS, MAX_WORDS = 9, 150
INSTRUCTION = "List each review's category as JSON."


def _task_module():
    """``data/make_task_data.py``, loaded from beside this file (data/ is not a package)."""
    path = Path(__file__).resolve().with_name("make_task_data.py")
    spec = importlib.util.spec_from_file_location("make_task_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_review(task, rng: random.Random) -> tuple[str, str]:
    """One sentence that carries a category (the task's topic sentence alone)."""
    category = rng.choice(task.CATEGORIES)
    sentiment = rng.choice(task.SENTIMENTS)
    return task._fill(rng.choice(task.TOPIC[(category, sentiment)]), rng), category


def make_record(task, rng: random.Random) -> dict[str, str]:
    """A prompt of reviews whose word count reaches a log-normal target; the categories."""
    target = math.exp(rng.gauss(math.log(MEDIAN_WORDS), LOG_SD))
    target = min(max(target, MIN_WORDS), MAX_WORDS)
    lines, categories = [], []
    words = len(INSTRUCTION.split())
    while True:
        if rng.random() < 0.5:
            text, labels = task.make_review(rng)
            category = labels["category"]
        else:
            text, category = short_review(task, rng)
        # add the review when it brings the length closer to the target (always the first)
        if lines and (
            words + len(text.split()) / 2 > target or words + len(text.split()) > MAX_WORDS
        ):
            break
        lines.append(f"{len(lines) + 1}. {text}")
        categories.append(category)
        words += len(text.split()) + 1
    return {"prompt": "\n".join([INSTRUCTION, *lines]), "completion": json.dumps(categories)}


def main(out: Path) -> None:
    task, rng = _task_module(), random.Random(SEED)
    records = [make_record(task, rng) for _ in range(N_RECORDS)]
    (out / "packing").mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out / "packing" / "train.jsonl").write_text(text, encoding="utf-8")
    words = sorted(len((r["prompt"] + " " + r["completion"]).split()) for r in records)
    print(f"wrote {len(records)} records to {out / 'packing' / 'train.jsonl'}: words "
          f"{words[0]}..{words[-1]}, median {words[len(words) // 2]}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    main(parser.parse_args().out)
