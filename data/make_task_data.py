"""Make the course's task data and the tiny model's pretraining corpus.

The task: a shop's customer-feedback tagger. A review goes in; JSON comes out with three
fields a support team routes on:

    {"category": "delivery", "sentiment": "negative", "urgency": "high"}

Everything is generated from sentence banks with one seeded ``random.Random`` per output, so
running the script again writes the same bytes (``tests/test_data.py`` checks it). Outputs:

    data/task/train.jsonl, valid.jsonl, test.jsonl   prompt/completion records (TRL's standard
                                                     "prompt-completion" format)
    data/task/mc_test.jsonl                          multiple-choice questions on test reviews
    data/corpus/pretrain.txt, heldout.txt            plain shop text, one document a line, with
                                                     no task labels (the tiny model's corpus)
    data/corpus/chat.jsonl                           instruction exchanges in chat form (never
                                                     the tagging task), also for pretraining

Usage: python data/make_task_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CATEGORIES = ("delivery", "quality", "billing", "returns", "support")
SENTIMENTS = ("positive", "neutral", "negative")
URGENCIES = ("low", "high")
INSTRUCTION = "Tag this review with category, sentiment and urgency as JSON."
SPLIT_SIZES = {"train": 2400, "valid": 240, "test": 240}
SPLIT_SEEDS = {
    "train": 11,
    "valid": 22,
    "test": 33,
    "corpus": 44,
    "heldout": 55,
    "mc": 66,
    "chat": 77,
}

PRODUCTS = [
    "rain jacket",
    "desk lamp",
    "coffee grinder",
    "yoga mat",
    "backpack",
    "kettle",
    "phone case",
    "wool scarf",
    "running shoes",
    "blender",
    "office chair",
    "water bottle",
    "bike light",
    "frying pan",
    "bath towel set",
    "winter boots",
    "headphones",
    "table fan",
    "cutting board",
    "hiking socks",
    "alarm clock",
    "garden hose",
    "throw blanket",
    "toaster",
]
WHEN = ["last week", "on Monday", "two weeks ago", "yesterday", "last month", "on Friday"]

# Sentences that carry the category, one bank per (category, sentiment).
TOPIC = {
    ("delivery", "positive"): [
        "The parcel arrived {days} early and the courier was friendly.",
        "Delivery was quick and the box came well packed.",
        "Shipping was fast, it reached my door in {n} days.",
    ],
    ("delivery", "neutral"): [
        "The parcel arrived in {n} days, about what the tracking page said.",
        "Delivery took {n} days and the box was fine.",
        "The courier left the package with a neighbour as the note said.",
    ],
    ("delivery", "negative"): [
        "The parcel is {days} late and the tracking has not moved.",
        "The courier never came and the package shows as delivered.",
        "Shipping took {n} weeks and the box was crushed.",
    ],
    ("quality", "positive"): [
        "The {product} feels solid and well made.",
        "The stitching on the {product} is neat and it works perfectly.",
        "The {product} is sturdy and the finish is lovely.",
    ],
    ("quality", "neutral"): [
        "The {product} works, though the material feels a bit thin.",
        "The {product} does the job but the finish is plain.",
        "The {product} is about what you expect for the price.",
    ],
    ("quality", "negative"): [
        "The {product} broke after {n} days of normal use.",
        "The {product} has a crack and the stitching came apart.",
        "The {product} stopped working and the handle fell off.",
    ],
    ("billing", "positive"): [
        "The invoice was clear and the discount code applied at checkout.",
        "Payment went through smoothly and the receipt came at once.",
        "I was charged exactly the price on the page, with the promised discount.",
    ],
    ("billing", "neutral"): [
        "The invoice lists the shipping fee separately from the item.",
        "My card was charged when the order shipped, not when I paid.",
        "The receipt shows the tax on a second line.",
    ],
    ("billing", "negative"): [
        "I was charged twice for the same order.",
        "The invoice shows a fee I never agreed to.",
        "My card was billed {amount} more than the price at checkout.",
    ],
    ("returns", "positive"): [
        "Sending the {product} back was easy and the refund came in {n} days.",
        "The return label was free and the exchange was quick.",
        "They accepted my return without questions and refunded me fast.",
    ],
    ("returns", "neutral"): [
        "I sent the {product} back and the refund is being processed.",
        "The return form asks for the order number and a reason.",
        "I posted the return {when} and am waiting for the refund.",
    ],
    ("returns", "negative"): [
        "I returned the {product} {when} and still have no refund.",
        "The shop refused my return even though it was unused.",
        "The return label did not work and nobody explains why.",
    ],
    ("support", "positive"): [
        "The agent on the chat solved my question in minutes.",
        "Customer service called me back and was very helpful.",
        "The support team answered my email the same day.",
    ],
    ("support", "neutral"): [
        "I spoke to an agent on the phone and got a ticket number.",
        "Support replied by email and asked for photos.",
        "The chat agent passed my question to another team.",
    ],
    ("support", "negative"): [
        "I called support {n} times and nobody answered.",
        "The agent on the chat was rude and closed the conversation.",
        "My emails to customer service have been ignored for {days}.",
    ],
}
FEELING = {
    "positive": [
        "I am really happy with it.",
        "Great experience overall.",
        "Thank you!",
        "Would buy here again.",
    ],
    "neutral": ["It is fine.", "Nothing special either way.", "We will see.", ""],
    "negative": [
        "Very disappointed.",
        "This is not acceptable.",
        "I am really annoyed.",
        "Never again.",
    ],
}
URGENT = {
    "high": [
        "Please fix this today.",
        "I need an answer before {deadline}.",
        "This is urgent, I need it for {event}.",
        "Please reply as soon as possible.",
    ],
    "low": ["No rush.", "Just letting you know.", "", "", "When you have time."],
}
DEADLINES = ["Friday", "the weekend", "tomorrow", "noon"]
EVENTS = ["a trip on Saturday", "my daughter's birthday", "work on Monday", "a wedding"]
FILLER = [
    "I ordered the {product} {when}.",
    "My sister recommended this shop.",
    "It was a gift for a friend.",
    "This was my first order here.",
    "I have shopped here for years.",
    "",
]


def _fill(template: str, rng: random.Random) -> str:
    """Replace the placeholders of a sentence template with random values."""
    return template.format(
        product=rng.choice(PRODUCTS),
        when=rng.choice(WHEN),
        n=rng.randint(2, 9),
        days=f"{rng.randint(2, 9)} days",
        amount=f"${rng.randint(3, 60)}",
        deadline=rng.choice(DEADLINES),
        event=rng.choice(EVENTS),
    )


def make_review(rng: random.Random) -> tuple[str, dict[str, str]]:
    """Draw one review and its labels."""
    labels = {
        "category": rng.choice(CATEGORIES),
        "sentiment": rng.choice(SENTIMENTS),
        "urgency": rng.choice(URGENCIES),
    }
    topic = rng.choice(TOPIC[(labels["category"], labels["sentiment"])])
    middle = [topic, rng.choice(FEELING[labels["sentiment"]])]
    rng.shuffle(middle)
    parts = [rng.choice(FILLER), *middle, rng.choice(URGENT[labels["urgency"]])]
    text = " ".join(_fill(p, rng) for p in parts if p)
    return text, labels


def make_record(rng: random.Random) -> dict[str, str]:
    """One task record: the prompt (instruction + review) and the JSON completion."""
    text, labels = make_review(rng)
    return {"prompt": f"{INSTRUCTION}\nReview: {text}", "completion": json.dumps(labels)}


def make_split(name: str, seen: set[str]) -> list[dict[str, str]]:
    """Draw a split whose reviews appear in no earlier split (``seen`` grows as it goes)."""
    rng = random.Random(SPLIT_SEEDS[name])
    records: list[dict[str, str]] = []
    while len(records) < SPLIT_SIZES[name]:
        record = make_record(rng)
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            records.append(record)
    return records


def make_mc(test: list[dict[str, str]], n: int = 240) -> list[dict]:
    """Multiple-choice questions on test reviews, one field asked per question."""
    rng = random.Random(SPLIT_SEEDS["mc"])
    options = {"category": CATEGORIES, "sentiment": SENTIMENTS, "urgency": URGENCIES}
    questions = []
    for record in test[:n]:
        field = rng.choice(list(options))
        review = record["prompt"].split("Review: ", 1)[1]
        gold = json.loads(record["completion"])[field]
        questions.append(
            {
                "question": f"Review: {review}\nWhat is the {field} of this review?",
                "choices": list(options[field]),
                "answer": options[field].index(gold),
                "field": field,
            }
        )
    return questions


def make_corpus_doc(rng: random.Random) -> str:
    """One unlabelled document of shop text: a review, an agent's reply, or a listing."""
    kind = rng.random()
    if kind < 0.6:
        return make_review(rng)[0]
    if kind < 0.85:
        review = make_review(rng)[0]
        reply = rng.choice(
            [
                "Thank you for your message, we are looking into it.",
                "We are sorry to hear that, our support team will contact you.",
                "Thanks for the kind words, we are glad you like it.",
                "Your refund has been issued and should arrive in a few days.",
            ]
        )
        return f"{review} Reply from the shop: {reply}"
    listing = {
        "product": rng.choice(PRODUCTS),
        "price": round(rng.uniform(5, 120), 2),
        "in_stock": rng.random() < 0.8,
        "rating": rng.randint(1, 5),
    }
    return json.dumps(listing)


REPLIES = {
    "positive": "Thanks for the kind words, we are glad you like it.",
    "neutral": "Thank you for your message, we are looking into it.",
    "negative": "We are sorry to hear that, our support team will contact you.",
}


def make_chat(rng: random.Random) -> dict:
    """One instruction exchange in chat form, for pretraining: never the tagging task.

    The tiny model learns the chat turns, to answer in JSON, and the label words (a support
    note that states its labels outright is copied into JSON). It never reads a review and
    decides its labels: that mapping is what fine-tuning has to teach.
    """
    kind = rng.random()
    if kind < 0.2:  # copy a support note's explicit labels into JSON (no review to read)
        labels = {
            "category": rng.choice(CATEGORIES),
            "sentiment": rng.choice(SENTIMENTS),
            "urgency": rng.choice(URGENCIES),
        }
        note = ", ".join(f"{k} {v}" for k, v in labels.items())
        ask, answer = f"Write this support note as JSON.\nNote: {note}.", json.dumps(labels)
    elif kind < 0.45:  # describe a product as JSON
        product, price = rng.choice(PRODUCTS), round(rng.uniform(5, 120), 2)
        stock, rating = rng.random() < 0.8, rng.randint(1, 5)
        ask = (
            f"Describe this product as JSON.\nProduct: the {product}, ${price}, "
            f"{'in stock' if stock else 'sold out'}, rated {rating} of 5."
        )
        answer = json.dumps(
            {"product": product, "price": price, "in_stock": stock, "rating": rating}
        )
    elif kind < 0.7:  # name the product a review mentions
        product = rng.choice(PRODUCTS)
        review = f"I ordered the {product} {rng.choice(WHEN)}. " + make_review(rng)[0]
        ask, answer = f"Which product does this review mention?\nReview: {review}", product
    else:  # reply to a review in the shop's voice
        review, labels = make_review(rng)
        ask = f"Write a short reply to this review.\nReview: {review}"
        answer = REPLIES[labels["sentiment"]]
    return {
        "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
    }


def make_corpus(name: str, n_docs: int, exclude: set[str] = frozenset()) -> list[str]:
    """Draw ``n_docs`` corpus documents, skipping any in ``exclude`` (so held-out is unseen)."""
    rng = random.Random(SPLIT_SEEDS[name])
    docs: list[str] = []
    while len(docs) < n_docs:
        doc = make_corpus_doc(rng)
        if doc not in exclude:
            docs.append(doc)
    return docs


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def main(out: Path) -> None:
    (out / "task").mkdir(parents=True, exist_ok=True)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    splits = {name: make_split(name, seen) for name in SPLIT_SIZES}
    for name, records in splits.items():
        write_jsonl(out / "task" / f"{name}.jsonl", records)
    write_jsonl(out / "task" / "mc_test.jsonl", make_mc(splits["test"]))
    pretrain = make_corpus("corpus", 30000)
    heldout = make_corpus("heldout", 500, exclude=set(pretrain))
    for name, docs in (("pretrain", pretrain), ("heldout", heldout)):
        (out / "corpus" / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    chat_rng = random.Random(SPLIT_SEEDS["chat"])
    write_jsonl(out / "corpus" / "chat.jsonl", [make_chat(chat_rng) for _ in range(8000)])
    print(f"wrote task splits {', '.join(f'{k}={len(v)}' for k, v in splits.items())} to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    main(parser.parse_args().out)
