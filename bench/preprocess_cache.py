"""Cold vs warm ``prepare_for``: tokenizing a 20k-row instruct-v3 set, then reusing the cache.

    python bench/preprocess_cache.py [--rows 20000]

Both runs happen in this one process on the same recipe and tokenizer (the real Mistral 7B v0.1
SentencePiece tokenizer from mistral-common); the data are generated here, seeded, with prompts of
10-200 words. Prints JSON with the two timings and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

WORDS = "the a fruit grape river engine quiet small blue tall answer question number seven window".split()


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for n in range(rows):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 200)))
            f.write(json.dumps({"prompt": f"Row {n}: {prompt}?", "response": rng.choice(WORDS)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()

    from finetune.data.preprocess import prepare_for
    from finetune.model.load import load_tokenizer
    from finetune.model.tiny import save_mistral_tokenizer
    from finetune.recipe.schema import Recipe

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rows(root / "rows.jsonl", args.rows)
        tokenizer_dir = save_mistral_tokenizer("v1", root / "tokenizer")
        recipe = Recipe(
            model={"base": str(tokenizer_dir), "tokenizer": str(tokenizer_dir)},
            data={"sources": [{"path": str(root / "rows.jsonl"), "format": "instruct-v3"}], "max_length": 1024},
            output={"dir": str(root / "runs")},
        )
        tokenizer = load_tokenizer(recipe.model)
        timings = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            data, _, note = prepare_for(recipe, tokenizer)
            timings[run] = round(time.perf_counter() - started, 3)
            timings[f"{run}_note"] = note.split(" ", 2)[1]
        timings.update(rows=args.rows, train_rows=len(data.train), speedup=round(timings["cold"] / timings["warm"], 1))
        print(json.dumps(timings))


if __name__ == "__main__":
    main()
