"""``mistral-ft preprocess RECIPE [--show N]``, and the prepared data ``train`` starts from.

:func:`prepare_for` is the one entry to the data path for a recipe: responses with loss masks (sft)
or preference pairs (dpo), through the cache (:mod:`finetune.data.cache`).  :func:`describe_data`
prints and writes what a user should look at before spending compute: the row report, the length
statistics and histogram (``data_lengths.png``), and ``rejected.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from finetune.data.cache import cached
from finetune.data.lengths import histogram_lines, length_stats, plot_lengths
from finetune.data.packing import best_fit_decreasing
from finetune.data.show import render_row
from finetune.errors import FinetuneError
from finetune.recipe.schema import Recipe


def prepare_for(recipe: Recipe, tokenizer):
    """(prepared data, cache folder or None, cache note) for the recipe's ``train.method``."""
    if recipe.train.method == "dpo":
        from finetune.data.preferences import prepare_preferences

        if recipe.data.packing:
            raise FinetuneError(
                "data.packing applies to SFT rows; DPO trains on (prompt, chosen, rejected) pairs, unpacked.",
                hint="Remove data.packing from this recipe.",
            )

        return cached(recipe, tokenizer, lambda: prepare_preferences(recipe.data, recipe.dpo, tokenizer))
    from finetune.data.prepare import prepare_data

    return cached(recipe, tokenizer, lambda: prepare_data(recipe.data, tokenizer))


def row_lengths(dataset) -> tuple[list[int], list[int]]:
    """(tokens per row, trained tokens per row); for a preference pair, its longer side and both answers."""
    if "completion_mask" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]], [sum(mask) for mask in dataset["completion_mask"]]
    prompts, chosen, rejected = dataset["prompt_input_ids"], dataset["chosen_input_ids"], dataset["rejected_input_ids"]
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)]
    return lengths, [len(c) + len(r) for c, r in zip(chosen, rejected)]


def describe_data(data, recipe: Recipe, folder: Path | None, console: Console, processes: int = 1) -> dict:
    """Print the length report and histogram; write data_lengths.png and rejected.jsonl into ``folder``."""
    lengths, trained = row_lengths(data.train)
    per_step = recipe.train.micro_batch_size * recipe.train.gradient_accumulation_steps * processes
    bins = len(best_fit_decreasing(lengths, recipe.data.max_length)) if recipe.data.packing else None
    stats = length_stats(lengths, trained, recipe.data.max_length, per_step, packed_into=bins)
    for line in stats.lines():
        console.print(f"  {line}")
    console.print("  tokens per row (training rows):")
    for line in histogram_lines(lengths, recipe.data.max_length):
        console.print(f"    {line}", highlight=False)
    if folder is not None:
        plot_lengths(lengths, trained, recipe.data.max_length, folder / "data_lengths.png",
                     f"{recipe.output.name}: {stats.rows:,} training rows")
        count = data.rejected.write(folder / "rejected.jsonl")
        if count:
            console.print(f"  [yellow]{count:,} rows not trained on, each with its reason: {folder / 'rejected.jsonl'}[/]",
                          soft_wrap=True)
    return stats.as_dict()


def preprocess(recipe: Recipe, show: int, console: Console) -> Path | None:
    """Prepare (or reuse) the recipe's data, report on it, and show ``show`` formatted rows."""
    from finetune.model.load import load_tokenizer

    with console.status("loading tokenizer"):
        tokenizer = load_tokenizer(recipe.model)
    started = time.perf_counter()
    with console.status("preparing data"):
        data, folder, note = prepare_for(recipe, tokenizer)
    console.print(data.report.summary())
    console.print(f"  {note} in {time.perf_counter() - started:.2f} s", soft_wrap=True)
    describe_data(data, recipe, folder, console)
    if folder is not None:
        console.print(f"  histogram: {folder / 'data_lengths.png'}", soft_wrap=True)
    if show:
        show_rows(data.train, tokenizer, show, console)
    return folder


def show_rows(dataset, tokenizer, count: int, console: Console) -> None:
    """The first ``count`` training rows as the model reads them, trained tokens marked « »."""
    if "completion_mask" not in dataset.column_names:
        console.print("[yellow]--show renders SFT rows; preference pairs are summarised above[/]")
        return
    console.print(f"\nfirst {min(count, len(dataset))} training rows (loss on the tokens inside « »):")
    for index in range(min(count, len(dataset))):
        row = dataset[index]
        console.rule(f"row {index}: {len(row['input_ids'])} tokens, {sum(row['completion_mask'])} trained")
        console.print(render_row(tokenizer, row["input_ids"], row["completion_mask"]))
