"""The run folder: one self-describing directory per training run.

Layout::

    runs/<name>-<timestamp>/
      recipe.yaml              the resolved recipe (defaults filled in, overrides applied)
      adapter/                 adapter_model.safetensors + adapter_config.json (PeftModel.from_pretrained)
      tokenizer/               the tokenizer the run used, with its SentencePiece tokenizer.model
      metrics.jsonl            one line per log event (step, loss, eval_loss, lr, tokens_per_s)
      loss.png                 training and held-out loss curves
      checkpoints/             trainer checkpoints (optimizer, scheduler, RNG) for resuming
      summary.json             final figures: train_seconds, eval loss and exact match before/after
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import yaml

from finetune.errors import FinetuneError
from finetune.recipe.schema import Recipe


def create_run_dir(recipe: Recipe, output: str | None = None) -> Path:
    """Make a fresh run folder; never reuse one that holds another run.

    With ``output`` the folder is exactly that path and must be absent or empty; otherwise it is
    ``<output.dir>/<output.name>-<timestamp>`` with a numeric suffix if that already exists.
    """
    if output is not None:
        path = check_output_free(output)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(recipe.output.dir) / f"{recipe.output.name}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def check_output_free(output: str | Path) -> Path:
    """``output`` as a path, if it is absent or an empty folder; otherwise a FinetuneError."""
    path = Path(output)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FinetuneError(
            f"Output folder {path} already exists and is not empty; mistral-ft never overwrites a run.",
            hint="Choose another --output, or delete that folder if you no longer need it.",
        )
    return path


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Save the resolved recipe, so the run can be reproduced from its folder alone."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    (run_dir / "recipe.yaml").write_text(text)


def write_summary(run_dir: Path, summary: dict) -> None:
    """Save the final figures of the run."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (empty when the run logged nothing)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # blank, or cut short by a process killed while appending
            continue
    return rows


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save the tokenizer, with the SentencePiece ``tokenizer.model`` it was loaded from.

    transformers saves only the fast tokenizer's files; prompt segments are token-exact with
    mistral-common only when encoded with the SentencePiece model (:mod:`finetune.data.text_encoder`),
    so generate / chat / merge on the run folder need that file too.
    """
    from finetune.data.text_encoder import sentencepiece_file

    tokenizer.save_pretrained(folder)
    source = sentencepiece_file(tokenizer)
    if source is not None and not (folder / "tokenizer.model").exists():
        shutil.copyfile(source, folder / "tokenizer.model")


def read_summary(run_dir: Path) -> dict:
    """``summary.json`` of a run (empty when it has none yet)."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def keep_metrics_until(run_dir: Path, step: int) -> None:
    """Drop ``metrics.jsonl`` rows logged after ``step``: a resumed run logs those steps again."""
    rows = [row for row in read_metrics(run_dir) if row.get("step", 0) <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
