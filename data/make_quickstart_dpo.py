"""Write the DPO quickstart data set: preference pairs in the three shapes of the ``preference`` format.

Every pair has a right answer (``chosen``) and a wrong one (``rejected``) that depends on the content
of the prompt, so held-out preference accuracy measures whether the model learnt the rule rather than
a favourite string (each answer is chosen in some rows and rejected in others):

- ``sentiment`` — strings: ``prompt`` / ``chosen`` / ``rejected`` are text; a comment about an object
  → ``happy`` or ``unhappy``;
- ``category`` — explicit prompt as messages (with a system message); ``chosen`` / ``rejected`` hold
  one assistant message: the group of the thing a sentence mentions (fruit, animal or vehicle);
- ``umbrella`` — implicit prompt: ``chosen`` and ``rejected`` are whole two-turn conversations that
  differ only in the final answer: ``yes`` or ``no`` to taking an umbrella, from the weather described.

Held-out prompts never appear in the training file (the words are shared, the sentences are not).
Run ``python data/make_quickstart_dpo.py`` to regenerate ``data/quickstart-dpo/{train,eval}.jsonl``;
the output depends only on the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OBJECTS = ["lamp", "kettle", "backpack", "chair", "jacket", "phone", "umbrella", "blender", "desk", "bike",
           "scarf", "clock", "tent", "mug", "pillow", "radio"]
HAPPY = ["sturdy", "bright", "comfortable", "handy", "reliable", "elegant", "quiet", "light", "warm", "solid"]
UNHAPPY = ["flimsy", "noisy", "broken", "ugly", "heavy", "leaky", "scratched", "wobbly", "useless", "cheap"]
ENDINGS = ["", " after a week", " so far", " in every way", " for the money", " at home"]

GROUPS = {
    "fruit": ["apple", "banana", "cherry", "grape", "mango", "peach"],
    "animal": ["dog", "cat", "horse", "tiger", "rabbit", "eagle"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "tram"],
}
PEOPLE = ["Ada", "Bruno", "Carla", "Dmitri", "Elif", "Femi", "Greta", "Hana", "Ivo", "Jun"]
ACTIONS = ["spotted", "drew", "described", "mentioned", "pointed at", "imagined"]
WHERE = ["at dawn", "in the park", "on a poster", "near the lake", "in a dream", "downtown"]

WET = ["rainy", "stormy", "drizzly", "showery", "wet", "thundery"]
DRY = ["sunny", "clear", "cloudless", "dry", "calm", "warm"]
OPENERS = ["I am about to go out.", "I have a quick question.", "Can you help me decide something?",
           "Good morning!", "I am planning a walk.", "Quick question before I leave."]
READY = ["Sure, go ahead.", "Of course, ask away.", "Happy to help.", "Ready when you are."]
ASKS = ["The sky is {w} today. Do I need an umbrella?", "It looks {w} outside. Should I take an umbrella?",
        "The forecast says {w}. Umbrella or not?"]

SYSTEM = "You sort things into three groups: fruit, animal or vehicle. Answer with the group only."


def sentiment_pair(rng: random.Random) -> dict:
    """Strings: a one- or two-part comment whose adjectives agree; chosen is its label."""
    happy = rng.random() < 0.5
    words = HAPPY if happy else UNHAPPY
    first, second = rng.sample(words, 2)
    thing = rng.choice(OBJECTS)
    comment = f"The {thing} is {first}{rng.choice(ENDINGS)}."
    if rng.random() < 0.5:
        comment += f" It is also {second}."
    labels = ("happy", "unhappy") if happy else ("unhappy", "happy")
    prompt = f"Is this comment happy or unhappy?\n\nComment: {comment}"
    return {"prompt": prompt, "chosen": labels[0], "rejected": labels[1]}


def category_pair(rng: random.Random) -> dict:
    """Explicit prompt as messages; chosen / rejected as one assistant message each."""
    group = rng.choice(list(GROUPS))
    wrong = rng.choice([g for g in GROUPS if g != group])
    sentence = f"{rng.choice(PEOPLE)} {rng.choice(ACTIONS)} a {rng.choice(GROUPS[group])} {rng.choice(WHERE)}."
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Sentence: {sentence}"}]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": group}],
        "rejected": [{"role": "assistant", "content": wrong}],
    }


def umbrella_pair(rng: random.Random) -> dict:
    """Implicit prompt: two whole conversations sharing every turn but the last answer."""
    wet = rng.random() < 0.5
    answer, wrong = ("yes", "no") if wet else ("no", "yes")
    context = [
        {"role": "user", "content": rng.choice(OPENERS)},
        {"role": "assistant", "content": rng.choice(READY)},
        {"role": "user", "content": rng.choice(ASKS).format(w=rng.choice(WET if wet else DRY))},
    ]
    return {
        "chosen": [*context, {"role": "assistant", "content": answer}],
        "rejected": [*context, {"role": "assistant", "content": wrong}],
    }


def prompt_key(row: dict) -> str:
    """What makes two rows the same question (used to keep held-out prompts out of training)."""
    prompt = row.get("prompt", row["chosen"][:-1])
    return json.dumps(prompt, sort_keys=True)


def make_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    """n pairs cycling through the three shapes, never repeating a prompt or one in ``exclude``."""
    makers = [sentiment_pair, category_pair, umbrella_pair]
    rows, seen = [], set(exclude)
    while len(rows) < n:
        row = makers[len(rows) % len(makers)](rng)
        key = prompt_key(row)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def main(out_dir: Path = Path(__file__).parent / "quickstart-dpo", n_train: int = 450, n_eval: int = 90) -> None:
    """Write train.jsonl and eval.jsonl with disjoint prompts."""
    rng = random.Random(2024)
    held_out = make_rows(n_eval, rng, exclude=set())
    train = make_rows(n_train, rng, exclude={prompt_key(r) for r in held_out})
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held_out)):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
