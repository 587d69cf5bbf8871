"""Make the course's second dataset: a customer's message parsed into an order action, as JSON.

A short message to the shop goes in; JSON comes out with what the customer wants done (the
intent) and the two slots it needs, read off the words:

    "Can you cancel the 2 desk lamps I ordered on Friday?"
    -> {"action": "cancel", "product": "desk lamp", "quantity": 2}

Unlike the review tagger (data/task), which infers labels from the tone of a review, this is
slot filling: the product name and the number are copied from the message (a weekday and an
order number are there to be ignored), and the action is named by one of several verb phrases.

The products are all "desk <thing>" on purpose. The tiny model's byte-level BPE splits a word
after a space (`Ġlamp`) differently from the same word after the JSON's quote (`lamp`), so a
one-word product would have to be mapped from one token to another, which the tiny model learns
only after a few hundred steps. With a shared first word, the JSON's value starts with the same
`desk` every time and its distinguishing word (` lamp`, ` fan`) is the same token in the message
and in the answer: a copy, which it learns as fast as the quantity.

Records are in the chat **messages** format (TRL's "conversational" format: a system turn, the
customer's message, the assistant's JSON), where data/task is prompt/completion. Everything
comes from word banks with one seeded ``random.Random`` per file, so running the script again
writes the same bytes (``tests/test_orders_data.py`` checks it). Outputs, in data/orders/:

    train.jsonl, valid.jsonl, test.jsonl   {"messages": [system, user, assistant]}
    mc_test.jsonl                          one slot of a test message as a multiple-choice
                                           question: {"question", "choices", "answer", "field"}

Usage: python data/make_orders_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Read the message and answer with JSON: action, product and quantity."
FIELDS = ("action", "product", "quantity")
ACTIONS = ("order", "cancel", "return")
QUANTITIES = tuple(range(1, 10))
SPLIT_SIZES = {"train": 1200, "valid": 120, "test": 120}
SPLIT_SEEDS = {"train": 101, "valid": 202, "test": 303, "mc": 404}
MC_SIZE = 120

PRODUCTS = ("desk lamp", "desk chair", "desk fan", "desk mat", "desk clock", "desk heater")
# {item}: the quantity and the product together, {day}: a weekday, {ref}: an order number
TEMPLATES = {
    "order": [
        "I'd like to order {item}.",
        "Please order {item} for me.",
        "Can I order {item} for {day}?",
        "I want to buy {item}, delivered by {day} if possible.",
        "Could you send me {item}?",
    ],
    "cancel": [
        "Please cancel my order of {item}.",
        "I no longer need {item}, please cancel them.",
        "Can you cancel the {item} I ordered on {day}?",
        "Please cancel order {ref}, the one for {item}.",
        "I changed my mind, cancel {item} please.",
    ],
    "return": [
        "I want to return {item}.",
        "How do I return {item}?",
        "I'd like to return {item} from order {ref} for a refund.",
        "I want to return the {item} I got on {day}.",
        "Can I send back {item} that arrived on {day}?",
    ],
}
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
OPENERS = ("", "", "Hi, ", "Hello, ", "Good morning, ")


def item_text(quantity: int, product: str) -> str:
    """The quantity and the product as a customer writes them: "1 kettle", "3 kettles"."""
    return f"{quantity} {product}" + ("s" if quantity > 1 else "")


def make_message(rng: random.Random) -> tuple[str, dict]:
    """Draw one customer message and its parse."""
    parse = {
        "action": rng.choice(ACTIONS),
        "product": rng.choice(PRODUCTS),
        "quantity": rng.choice(QUANTITIES),
    }
    item = item_text(parse["quantity"], parse["product"])
    text = rng.choice(TEMPLATES[parse["action"]]).format(
        item=item, day=rng.choice(DAYS), ref=f"#{rng.randint(1000, 9999)}"
    )
    opener = rng.choice(OPENERS)
    if opener and not (text.startswith("I ") or text.startswith("I'")):  # "I" stays capital
        text = opener + text[0].lower() + text[1:]
    elif opener:
        text = opener + text
    return text[0].upper() + text[1:], parse


def make_record(rng: random.Random) -> dict:
    """One chat record: the system instruction, the message, the assistant's JSON."""
    text, parse = make_message(rng)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(parse)},
        ]
    }


def make_split(name: str, seen: set[str]) -> list[dict]:
    """Draw a split whose messages appear in no earlier split (``seen`` grows as it goes)."""
    rng = random.Random(SPLIT_SEEDS[name])
    records: list[dict] = []
    while len(records) < SPLIT_SIZES[name]:
        record = make_record(rng)
        message = record["messages"][1]["content"]
        if message not in seen:
            seen.add(message)
            records.append(record)
    return records


def make_mc(test: list[dict], n: int = MC_SIZE) -> list[dict]:
    """Multiple-choice questions on test messages, one slot (action or product) each."""
    rng = random.Random(SPLIT_SEEDS["mc"])
    options = {"action": ACTIONS, "product": PRODUCTS}
    questions = []
    for record in test[:n]:
        field = rng.choice(list(options))
        message = record["messages"][1]["content"]
        gold = json.loads(record["messages"][2]["content"])[field]
        questions.append(
            {
                "question": f"Message: {message}\nWhich {field} does this message ask for?",
                "choices": list(options[field]),
                "answer": options[field].index(gold),
                "field": field,
            }
        )
    return questions


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def main(out: Path) -> None:
    """Write the three splits and the multiple-choice file into ``out`` (made if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    splits = {name: make_split(name, seen) for name in SPLIT_SIZES}
    for name, records in splits.items():
        write_jsonl(out / f"{name}.jsonl", records)
    write_jsonl(out / "mc_test.jsonl", make_mc(splits["test"]))
    print(f"wrote {', '.join(f'{k}={len(v)}' for k, v in splits.items())} to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "orders")
    main(parser.parse_args().out)
