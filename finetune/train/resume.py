"""``mistral-ft train R.yaml --resume [CHECKPOINT|RUN|latest]``: which run folder and checkpoint to continue.

Checkpoints newer than the one resumed from belong to the abandoned continuation and are removed
when the run folder is reopened.  ``latest`` means the newest good checkpoint of the run in ``--output`` (or, without it, of the newest
``<output.dir>/<output.name>-*`` run).  A run folder means its newest good checkpoint; a
``checkpoint-N`` folder means exactly that one.  Newer checkpoints that fail their manifest check are
named with the reason and passed over.  The recipe given must be the run's: only the keys in
:data:`MAY_CHANGE` (how long to train, how often to log / evaluate / save) may differ, so a resumed run
never silently continues with other data, another model or another learning rate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune.errors import FinetuneError
from finetune.recipe.schema import Recipe
from finetune.train.checkpoints import STAGING, newest_good, problem

MAY_CHANGE = {
    "train.max_steps", "train.epochs", "train.logging_steps", "train.eval_steps", "train.save_steps",
    "train.save_total_limit", "output.dir", "output.name", "eval.generate", "eval.loss",
    "eval.max_new_tokens", "eval.batch_size", "eval.max_samples",
}


@dataclass
class ResumePoint:
    """Where a resumed run continues: its folder, the checkpoint, and the newer checkpoints skipped."""

    run_dir: Path
    checkpoint: Path
    skipped: list[tuple[Path, str]]

    def describe(self) -> list[str]:
        lines = [f"[yellow]skipping {path}: {reason}[/]" for path, reason in self.skipped]
        return lines + [f"resuming {self.run_dir} from {self.checkpoint.name} (later checkpoints are removed: "
                        "the run continues from here)"]


def find_resume_point(which: str, recipe: Recipe, output: str | None) -> ResumePoint:
    """The run folder and checkpoint ``--resume which`` names (see the module docstring)."""
    path = Path(which)
    if which == "latest":
        run_dir = Path(output) if output else _newest_run(recipe)
        point = _newest_in(run_dir)
    elif path.name.startswith("checkpoint-") and path.is_dir():
        reason = problem(path)
        if reason is not None:
            raise FinetuneError(
                f"--resume {path}: this checkpoint cannot be used: {reason}.",
                hint="Pass the run folder or `latest` to resume from the newest good checkpoint instead.",
            )
        point = ResumePoint(path.parent.parent, path, [])
    elif path.is_dir():
        point = _newest_in(path)
    else:
        raise FinetuneError(
            f"--resume {which}: no such run or checkpoint folder.",
            hint="Give a run folder (runs/<name>-<timestamp>), one of its checkpoints/checkpoint-N folders, or `latest`.",
        )
    check_same_recipe(point.run_dir, recipe)
    return point


def check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume when the recipe differs from the run's beyond :data:`MAY_CHANGE`."""
    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        raise FinetuneError(f"{run_dir} has no recipe.yaml: it is not a mistral-ft run folder.")
    saved = _flatten(yaml.safe_load(saved_file.read_text()))
    current = _flatten(recipe.model_dump(mode="json"))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k) and k not in MAY_CHANGE)
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the run, {current.get(k)!r} now" for k in changed[:6])
        raise FinetuneError(
            f"Cannot resume {run_dir}: the recipe differs from the one the run started with ({shown}).",
            hint="Resume with the run's own recipe (`mistral-ft train "
            f"{saved_file} --resume ...`), or start a new run. Only how long to train and how often to log, "
            "evaluate and save may change on resume.",
        )


def check_same_data(run_dir: Path, fingerprint: str | None, processes: int) -> None:
    """Refuse to resume on other data (the tokenized data's cache key) or another number of processes.

    The checkpoint's position in the data is a count of batches: on changed data, or with the batch
    spread over another number of processes, the trainer would skip the wrong rows.
    """
    summary_file = run_dir / "summary.json"
    saved = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if saved.get("data_fingerprint") and fingerprint and saved["data_fingerprint"] != fingerprint:
        raise FinetuneError(
            f"Cannot resume {run_dir}: the data changed since the run started (tokenized data "
            f"{saved['data_fingerprint']} then, {fingerprint} now: a data file, the tokenizer or a data setting differs).",
            hint="Restore the data the run trained on, or start a new run.",
        )
    if saved.get("processes", processes) != processes:
        raise FinetuneError(
            f"Cannot resume {run_dir}: it trained with {saved['processes']} process(es), this resume has {processes}; "
            "the checkpoint's place in the data and the effective batch depend on it.",
            hint=f"Resume with --nproc {saved['processes']} (or the same accelerate launch as before).",
        )


def _newest_in(run_dir: Path) -> ResumePoint:
    checkpoints = run_dir / "checkpoints"
    if not (run_dir / "recipe.yaml").is_file():
        raise FinetuneError(
            f"--resume: {run_dir} is not a mistral-ft run folder (no recipe.yaml).",
            hint="Pass the folder the run was written to (its --output, or runs/<name>-<timestamp>).",
        )
    choice = newest_good(checkpoints)
    if choice.checkpoint is None:
        skipped = "".join(f" {p.name}: {why}." for p, why in choice.skipped)
        staged = " A save was interrupted before it finished." if (checkpoints / STAGING).exists() else ""
        raise FinetuneError(
            f"--resume: {run_dir} has no usable checkpoint.{skipped}{staged}",
            hint="Checkpoints are written every train.save_steps steps (and on Ctrl-C); set train.save_steps "
            "for runs you may need to resume, or start the run again.",
        )
    return ResumePoint(run_dir, choice.checkpoint, choice.skipped)


def _newest_run(recipe: Recipe) -> Path:
    """The newest ``<output.dir>/<output.name>-*`` folder that holds a run."""
    named = re.compile(rf"^{re.escape(recipe.output.name)}-\d{{8}}-\d{{6}}(-\d+)?$")  # not quickstart-dpo-*
    runs = sorted(
        (p for p in Path(recipe.output.dir).glob(f"{recipe.output.name}-*")
         if named.match(p.name) and (p / "recipe.yaml").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise FinetuneError(
            f"--resume latest: no run of this recipe in {recipe.output.dir}/ (looked for {recipe.output.name}-*).",
            hint="Pass the run folder with --output, or its path to --resume.",
        )
    return runs[-1]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
