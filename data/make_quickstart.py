"""Write the quickstart data set: small instruction tasks in the mosaicml/instruct-v3 layout.

Every row has the three instruct-v3 columns: ``prompt`` (the instruction wrapped in the
Alpaca-style preamble that instruct-v3 uses), ``response`` and ``source``.  The tasks have short,
exactly checkable answers that depend on the content of the prompt, so held-out exact match measures
whether the fine-tune generalised rather than memorised:

- ``sentiment``: a generated restaurant review → ``positive`` or ``negative``;
- ``category``: a sentence about one thing → ``fruit``, ``animal`` or ``vehicle``.

The held-out file uses sentences that never appear in the training file.
Run ``python data/make_quickstart.py`` to regenerate ``data/quickstart/{train,eval}.jsonl``; the
output depends only on the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

SUBJECTS = ["The soup", "The pasta", "Our waiter", "The dessert", "The coffee", "The bread", "The room",
            "The salad", "The music", "The curry", "The pizza", "The service", "The wine", "The chef",
            "The terrace", "The burger", "The staff", "The menu", "The noodles", "The fish"]
GOOD = ["wonderful", "delicious", "excellent", "lovely", "superb", "fantastic", "delightful", "great",
        "perfect", "charming", "fresh", "amazing"]
BAD = ["awful", "terrible", "bland", "horrible", "disappointing", "dreadful", "stale", "cold",
       "rude", "greasy", "poor", "soggy"]
TAILS = ["tonight.", "as always.", "this time.", "on Friday.", "for the price.", "at lunch.", ""]


def sentiment_row(rng: random.Random) -> tuple[str, str]:
    """A one- or two-sentence review whose adjectives all carry the same sentiment."""
    label = rng.choice(["positive", "negative"])
    words = GOOD if label == "positive" else BAD
    sentences = []
    for _ in range(rng.choice([1, 2])):
        tail = rng.choice(TAILS)
        sentences.append(f"{rng.choice(SUBJECTS)} was {rng.choice(words)}" + (f" {tail}" if tail else "."))
    review = " ".join(s if s.endswith(".") else s + "." for s in sentences)
    instruction = f"Classify the sentiment of this review as positive or negative.\n\nReview: {review}"
    return instruction, label


THINGS = {
    "fruit": ["apple", "banana", "cherry", "grape", "mango", "peach", "pear", "plum", "lemon", "melon",
              "kiwi", "apricot", "fig", "lime", "papaya", "orange"],
    "animal": ["dog", "cat", "horse", "tiger", "rabbit", "eagle", "whale", "zebra", "goat", "wolf",
               "otter", "camel", "fox", "sheep", "parrot", "lion"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "tram", "scooter", "van", "ferry", "tractor",
                "taxi", "canoe", "lorry", "motorbike", "yacht", "jeep"],
}
NAMES = ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Keiko", "Luis"]
VERBS = ["saw", "liked", "painted", "photographed", "noticed", "described", "found", "drew"]
PLACES = ["near the river", "in the garden", "at the market", "behind the school", "in a picture",
          "on the hill", "by the station", "in town"]


def category_row(rng: random.Random) -> tuple[str, str]:
    """A sentence mentioning one thing, and that thing's category."""
    label = rng.choice(list(THINGS))
    sentence = f"{rng.choice(NAMES)} {rng.choice(VERBS)} a {rng.choice(THINGS[label])} {rng.choice(PLACES)}."
    instruction = f"Is the thing in this sentence a fruit, an animal or a vehicle?\n\nSentence: {sentence}"
    return instruction, label


def instruct_v3_prompt(instruction: str) -> str:
    """Wrap an instruction the way mosaicml/instruct-v3's prompt column does."""
    return f"{PREAMBLE}\n\n### Instruction\n{instruction}\n\n### Response\n"


def make_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    """n rows alternating between the tasks, never repeating a prompt or one in ``exclude``."""
    makers = {"sentiment": sentiment_row, "category": category_row}
    rows, seen = [], set(exclude)
    while len(rows) < n:
        source = list(makers)[len(rows) % len(makers)]
        instruction, answer = makers[source](rng)
        prompt = instruct_v3_prompt(instruction)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "response": answer, "source": source})
    return rows


def main(out_dir: Path = Path(__file__).parent / "quickstart", n_train: int = 800, n_eval: int = 100) -> None:
    """Write train.jsonl and eval.jsonl with disjoint instructions."""
    rng = random.Random(1234)
    held_out = make_rows(n_eval, rng, exclude=set())
    train = make_rows(n_train, rng, exclude={r["prompt"] for r in held_out})
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held_out)):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
