"""``mistral-ft train``: recipe → tokenizer + data → model + adapters → trainer → run folder.

Each step is one call into a module named for what it does; this file only puts them in order and
records what happened.  Held-out loss (and exact match, when asked) is measured before and after
training on the same rows so the run shows what the fine-tune bought.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers import set_seed

from finetune.data import prepare_data
from finetune.errors import FinetuneError
from finetune.model.adapters import attach_lora
from finetune.model.load import load_base_model, load_tokenizer
from finetune.recipe.schema import Recipe
from finetune.train import run_dir as runs
from finetune.train.callbacks import MetricsLogger, RichProgress
from finetune.train.evaluate import exact_match
from finetune.train.plots import plot_losses
from finetune.train.sft import build_sft_trainer


def train(
    recipe: Recipe, output: str | None = None, console: Console | None = None, skip_validate: bool = False
) -> Path:
    """Run the recipe end to end and return the run folder.

    Before any training step the fast subset of ``mistral-ft validate`` (config invariants, the
    [INST] template against mistral-common, a short parity check) runs on the loaded model; a failure
    stops the run unless ``skip_validate``.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    if output is not None:
        runs.check_output_free(output)  # fail before the slow steps, not after them
    with console.status("loading tokenizer"):
        tokenizer = load_tokenizer(recipe.model)
    with console.status("preparing data"):
        data = prepare_data(recipe.data, tokenizer)
    console.print(data.report.summary())

    with console.status(f"loading {recipe.model.base} ({recipe.model.quantization})"):
        model = load_base_model(recipe.model)
    _pre_validate(recipe, model, tokenizer, console, skip_validate)
    with console.status("attaching LoRA adapters"):
        set_seed(recipe.train.seed)  # adapter init depends on the recipe's seed alone
        model = attach_lora(model, recipe.lora, recipe.train.gradient_checkpointing)
    trainable, total = model.get_nb_trainable_parameters()
    console.print(f"model: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable (LoRA r={recipe.lora.r})")

    # The folder is made only once every input has loaded, so a typo never leaves an empty run behind.
    run_dir = runs.create_run_dir(recipe, output)
    runs.write_recipe(run_dir, recipe)
    console.print(f"[bold]run folder[/] {run_dir}")

    use_cpu = not torch.cuda.is_available()
    callbacks = [MetricsLogger(run_dir / "metrics.jsonl"), RichProgress(console)]
    trainer = build_sft_trainer(recipe, model, tokenizer, data, run_dir, callbacks, use_cpu)

    summary: dict = {"run_dir": str(run_dir), "base_model": recipe.model.base, "data": data.report.as_dict()}
    summary.update(_evaluate(recipe, trainer, tokenizer, data, "before", console))
    train_start = time.perf_counter()
    result = trainer.train()
    summary["train_seconds"] = round(time.perf_counter() - train_start, 2)
    summary["train_loss"] = result.training_loss
    summary["steps"] = trainer.state.global_step
    summary.update(_evaluate(recipe, trainer, tokenizer, data, "after", console))

    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "tokenizer")
    plot_losses(runs.read_metrics(run_dir), run_dir / "loss.png", f"{recipe.output.name}: loss")
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    runs.write_summary(run_dir, summary)
    _print_summary(console, summary)
    return run_dir


def _pre_validate(recipe: Recipe, model, tokenizer, console: Console, skip: bool) -> None:
    """Refuse to spend compute on a model that does not attend or format prompts the Mistral way."""
    from finetune.validate import Subject, fast_subset, render_table

    with console.status("validating model and template"):
        rows = fast_subset(Subject.from_live(model, tokenizer, template_choice=recipe.data.template))
    failed = [r for r in rows if not r.passed]
    if not failed:
        console.print(f"validate: {len(rows)} pre-training checks passed")
        return
    render_table(failed, console=console)
    names = ", ".join(r.name for r in failed)
    if skip:
        console.print(f"[yellow]validate: {names} failed; continuing because of --skip-validate[/]")
        return
    raise FinetuneError(
        f"The model failed {len(failed)} pre-training check(s): {names} (table above).",
        hint="Fix the model or template, run `mistral-ft validate` for the full report, or pass "
        "--skip-validate to train anyway.",
    )


def _evaluate(recipe: Recipe, trainer, tokenizer, data, when: str, console: Console) -> dict:
    """Held-out loss and exact match, keyed ``eval_loss_<when>`` / ``exact_match_<when>``."""
    out: dict = {}
    if data.eval is not None and recipe.eval.loss:
        with console.status(f"held-out loss ({when})"):
            out[f"eval_loss_{when}"] = trainer.evaluate()["eval_loss"]
    if recipe.eval.generate and data.eval_prompts:
        with console.status(f"held-out generation ({when})"):
            em = exact_match(
                trainer.model,
                tokenizer,
                data.eval_prompts,
                max_new_tokens=recipe.eval.max_new_tokens,
                batch_size=recipe.eval.batch_size,
                max_samples=recipe.eval.max_samples,
            )
        out[f"exact_match_{when}"] = em.score
        out[f"exact_match_{when}_n"] = em.n
        out[f"exact_match_{when}_examples"] = em.examples
    return out


def _print_summary(console: Console, s: dict) -> None:
    """The closing lines: held-out loss and exact match before → after, and the time taken."""
    console.print(f"[bold green]done[/] in {s['wall_seconds']:.0f} s (training {s['train_seconds']:.0f} s, {s['steps']} steps)")
    if "eval_loss_before" in s:
        console.print(f"held-out loss:        {s['eval_loss_before']:.4f} → {s['eval_loss_after']:.4f}")
    if "exact_match_before" in s and not math.isnan(s["exact_match_before"]):
        n = s["exact_match_after_n"]
        console.print(
            f"held-out exact match: {s['exact_match_before']:.1%} → {s['exact_match_after']:.1%} ({n} prompts)"
        )
    console.print(f"adapter: {s['run_dir']}/adapter")
