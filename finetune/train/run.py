"""``mistral-ft train``: recipe → tokenizer + data → model + adapters → trainer → run folder.

Each step is one call into a module named for what it does; this file only puts them in order and
records what happened.  ``train.method`` picks the data path and trainer: sft (responses, TRL's
SFTTrainer) or dpo (preference pairs, TRL's DPOTrainer; see :mod:`finetune.train.dpo`).  Held-out
figures are measured before and after training on the same rows so the run shows what the fine-tune
bought: loss and exact match for sft, preference accuracy and log-prob margin for dpo.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers import set_seed

from finetune.data.preprocess import describe_data, prepare_for, row_lengths
from finetune.errors import FinetuneError, Interrupted
from finetune.model.adapters import POLICY, add_frozen_copy, adapter_dir, attach_lora, resume_lora
from finetune.model.load import load_base_model, load_tokenizer
from finetune.recipe.schema import Recipe
from finetune.train import distributed, memory
from finetune.train import run_dir as runs
from finetune.train.callbacks import (
    MetricsLogger,
    RichProgress,
    SaveOnInterrupt,
    check_reporters,
    reporting_callbacks,
)
from finetune.train.checkpoints import step_of
from finetune.train.evaluate import exact_match
from finetune.train.plots import plot_losses
from finetune.train.preference_eval import preference_score
from finetune.train.report import peak_memory, write_report
from finetune.train.resume import ResumePoint, check_same_data, find_resume_point
from finetune.train.sft import build_sft_trainer


def train(
    recipe: Recipe,
    output: str | None = None,
    console: Console | None = None,
    skip_validate: bool = False,
    resume: str | None = None,
) -> Path:
    """Run the recipe end to end and return the run folder.

    Before any training step the fast subset of ``mistral-ft validate`` (config invariants, the
    [INST] template against mistral-common, a short parity check) runs on the loaded model; a failure
    stops the run unless ``skip_validate``.  ``resume`` (``latest``, a run folder or a checkpoint)
    continues an earlier run in its own folder, see :mod:`finetune.train.resume`.  Under
    ``accelerate launch`` every process runs this function; the main one prepares the data and
    writes the folder (:mod:`finetune.train.distributed`).
    """
    if not distributed.is_main():
        console = Console(stderr=True, quiet=True)  # one voice: the main process
    console = console or Console(stderr=True)
    started = time.perf_counter()
    check_reporters(recipe.train.report_to)
    point = distributed.main_computes(lambda: _resume_point(recipe, output, resume))
    for line in point.describe() if point else []:
        console.print(line, soft_wrap=True)  # paths stay whole
    start_adapter = adapter_dir(recipe.model.adapter) if recipe.model.adapter else None
    with console.status("loading tokenizer"):
        tokenizer = load_tokenizer(recipe.model)
    with console.status("preparing data"):
        data, data_folder, cache_note = distributed.main_computes(lambda: prepare_for(recipe, tokenizer))
    fingerprint = data_folder.name if data_folder is not None else None  # the data cache key
    console.print(data.report.summary())
    console.print(f"  {cache_note}", soft_wrap=True)
    guess = _memory_estimate(recipe, data, console)

    model = _load_model(recipe, tokenizer, start_adapter, console, skip_validate)
    batch = distributed.effective_batch(recipe.train.micro_batch_size, recipe.train.gradient_accumulation_steps)
    console.print(
        f"batch: {batch['micro_batch_size']} rows × {batch['gradient_accumulation_steps']} accumulation × "
        f"{batch['processes']} process(es) = {batch['effective_batch_size']} rows per optimiser step"
    )

    # The folder is made only once every input has loaded, so a typo never leaves an empty run behind.
    if point is not None:
        distributed.main_computes(lambda: check_same_data(point.run_dir, fingerprint, batch["processes"]))
    run_dir = distributed.main_computes(lambda: _open_run_dir(recipe, output, point))
    console.print(f"[bold]run folder[/] {run_dir}")
    lengths = describe_data(data, recipe, run_dir if distributed.is_main() else None, console, batch["processes"])

    use_cpu = not torch.cuda.is_available()
    interrupt = SaveOnInterrupt(console)
    callbacks = [MetricsLogger(run_dir / "metrics.jsonl"), RichProgress(console), interrupt]
    callbacks += reporting_callbacks(recipe.train.report_to, run_dir)
    trainer = _build_trainer(recipe, model, tokenizer, data, run_dir, callbacks, use_cpu)
    if warning := distributed.unmet_request(trainer.accelerator):
        console.print(f"[yellow]warning: {warning}[/]")

    summary = runs.read_summary(run_dir) if point else {}
    summary.update(run_dir=str(run_dir), base_model=recipe.model.base, data=data.report.as_dict(), lengths=lengths,
                   data_fingerprint=fingerprint, **batch, estimated_peak_mib=round(guess.peak / memory.MIB, 1) if guess else None,
                   parallelism=distributed.parallelism(trainer.accelerator))
    if "eval_loss_before" not in summary and "preference_accuracy_before" not in summary:
        summary.update(_evaluate(recipe, trainer, tokenizer, data, "before", console))
    summary["status"] = "training"
    if distributed.is_main():
        runs.write_summary(run_dir, summary)  # the figures before training survive an interruption

    train_start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(point.checkpoint) if point else None)
    summary["train_seconds"] = round(time.perf_counter() - train_start, 2)
    summary["steps"] = trainer.state.global_step
    summary["tokens_per_second"] = round(trainer.tokens_seen / max(summary["train_seconds"], 1e-9), 1)
    summary.update(peak_memory())
    if interrupt.stopped_at is not None:
        return _stopped(recipe, run_dir, summary, data, interrupt.stopped_at)
    summary["train_loss"] = result.training_loss
    summary.update(_evaluate(recipe, trainer, tokenizer, data, "after", console))

    save_adapter(trainer, run_dir / "adapter")
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    summary["status"] = "done"
    if distributed.is_main():
        runs.save_tokenizer(tokenizer, run_dir / "tokenizer")
        _write_records(recipe, run_dir, summary, data)
    _print_summary(console, summary)
    return run_dir


def _memory_estimate(recipe: Recipe, data, console: Console):
    """The peak-memory estimate for the longest prepared row, with a warning when it will not fit.  It is
    advice: when it cannot be made (an unusual config.json), the run goes on without it."""
    try:
        guess = memory.for_recipe(recipe, longest_row=max(row_lengths(data.train)[0], default=None))
    except (KeyError, TypeError, ValueError, FinetuneError) as error:
        console.print(f"[yellow]note: no memory estimate for this model ({error!r}); training anyway[/]")
        return None
    if distributed.is_main() and (warning := memory.shortfall(guess, distributed.local_processes())):
        console.print(f"[yellow]warning: {warning}[/]")
    return guess


def _load_model(recipe: Recipe, tokenizer, start_adapter, console: Console, skip_validate: bool):
    """The base model, checked by the fast validate subset, with its LoRA adapters attached."""
    with console.status(f"loading {recipe.model.base} ({recipe.model.quantization})"):
        model = load_base_model(recipe.model)
    _pre_validate(recipe, model, tokenizer, console, skip_validate)
    with console.status("attaching LoRA adapters"):
        model = attach_adapters(recipe, model, start_adapter)
    trainable, total = model.get_nb_trainable_parameters()
    origin = f"from {start_adapter}" if start_adapter else "fresh"
    console.print(
        f"model: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable "
        f"(LoRA r={model.peft_config[POLICY].r}, {origin})"
    )
    return model


def _write_records(recipe: Recipe, run_dir: Path, summary: dict, data) -> None:
    """summary.json, loss.png and report.md: what the run did, for the main process to write."""
    runs.write_summary(run_dir, summary)
    plot_losses(runs.read_metrics(run_dir), run_dir / "loss.png", f"{recipe.output.name}: loss")
    write_report(run_dir, recipe, summary, data.report.summary())


def _resume_point(recipe: Recipe, output: str | None, resume: str | None) -> ResumePoint | None:
    """The checkpoint to continue from, or None for a new run (whose ``--output`` must then be free)."""
    if resume is None:
        if output is not None:
            runs.check_output_free(output)  # fail before the slow steps, not after them
        return None
    return find_resume_point(resume, recipe, output)


def _open_run_dir(recipe: Recipe, output: str | None, point: ResumePoint | None) -> Path:
    """A new run folder with the resolved recipe, or the resumed run's, its metrics cut back to the checkpoint."""
    if point is not None:
        step = step_of(point.checkpoint)
        for newer in point.run_dir.glob("checkpoints/checkpoint-*"):  # from the abandoned continuation
            if newer.is_dir() and newer.name[len("checkpoint-"):].isdigit() and step_of(newer) > step:
                shutil.rmtree(newer)
        runs.keep_metrics_until(point.run_dir, step)
        runs.write_recipe(point.run_dir, recipe)
        return point.run_dir
    run_dir = runs.create_run_dir(recipe, output)
    runs.write_recipe(run_dir, recipe)
    return run_dir



def _stopped(recipe: Recipe, run_dir: Path, summary: dict, data, step: int) -> Path:
    """Record an interrupted run and raise :class:`Interrupted` naming the command that resumes it."""
    summary["status"] = f"interrupted at step {step}"
    if distributed.is_main():
        _write_records(recipe, run_dir, summary, data)
    raise distributed.raised_everywhere(Interrupted(
        f"Training stopped at step {step}; checkpoint {run_dir}/checkpoints/checkpoint-{step} was written.",
        hint=f"Continue with `mistral-ft train <recipe> --resume latest --output {run_dir}`.",
    ))


def save_adapter(trainer, folder: Path) -> None:
    """Write the trained policy adapter once, whole, from the main process.

    Under FSDP or DeepSpeed ZeRO-3 each process holds a shard of the weights: every process takes
    part in gathering the full state dict, then only the main one writes it (never DPO's frozen
    reference adapter).
    """
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if distributed.is_main():
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(folder, selected_adapters=[POLICY], state_dict=state_dict)
    distributed.barrier()


def attach_adapters(recipe: Recipe, model, start_adapter):
    """The policy adapter: fresh LoRA, or the trained one at ``start_adapter`` (trainable).

    DPO from a trained adapter also loads it a second time, frozen, as the reference policy; from a
    fresh adapter the reference is the base itself (adapter disabled), so no copy is needed.
    """
    checkpointing = recipe.train.gradient_checkpointing
    if start_adapter is None:
        set_seed(recipe.train.seed)  # adapter init depends on the recipe's seed alone
        return attach_lora(model, recipe.lora, checkpointing)
    model = resume_lora(model, start_adapter, checkpointing)
    if recipe.train.method == "dpo":
        add_frozen_copy(model, start_adapter)
    return model


def _build_trainer(recipe: Recipe, model, tokenizer, data, run_dir: Path, callbacks, use_cpu: bool):
    """TRL's trainer for the method, over the prepared data."""
    if recipe.train.method == "dpo":
        from finetune.train.dpo import build_dpo_trainer

        return build_dpo_trainer(recipe, model, tokenizer, data, run_dir, callbacks, use_cpu)
    return build_sft_trainer(recipe, model, tokenizer, data, run_dir, callbacks, use_cpu)


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
    if recipe.train.method == "dpo":
        return _evaluate_preferences(recipe, trainer, tokenizer, data, when, console)
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


def _evaluate_preferences(recipe: Recipe, trainer, tokenizer, data, when: str, console: Console) -> dict:
    """Held-out DPO loss and TRL's reward accuracy / margin (against the reference), and preference
    accuracy / log-prob margin of the policy alone; keys end in ``_<when>``."""
    if data.eval is None:
        return {}
    out: dict = {}
    if recipe.eval.loss:
        with console.status(f"held-out DPO loss ({when})"):
            metrics = trainer.evaluate()
        out[f"eval_loss_{when}"] = metrics["eval_loss"]
        out[f"eval_reward_accuracy_{when}"] = metrics["eval_rewards/accuracies"]
        out[f"eval_reward_margin_{when}"] = metrics["eval_rewards/margins"]
    with console.status(f"held-out preference accuracy ({when})"):
        score = preference_score(trainer.model, data.eval, tokenizer.pad_token_id, recipe.eval.batch_size)
    out[f"preference_accuracy_{when}"] = score.accuracy
    out[f"logp_margin_{when}"] = score.margin
    out[f"logp_chosen_{when}"] = score.chosen_logp
    out[f"logp_rejected_{when}"] = score.rejected_logp
    out["preference_pairs"] = score.n
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
    if "preference_accuracy_before" in s:
        console.print(
            f"held-out preference accuracy: {s['preference_accuracy_before']:.1%} → "
            f"{s['preference_accuracy_after']:.1%} ({s['preference_pairs']} pairs)"
        )
        console.print(
            f"held-out log-prob margin (chosen − rejected): {s['logp_margin_before']:+.2f} → {s['logp_margin_after']:+.2f}"
        )
    if "eval_reward_accuracy_after" in s:
        console.print(
            f"TRL eval rewards after training: accuracy {s['eval_reward_accuracy_after']:.1%}, "
            f"margin {s['eval_reward_margin_after']:+.3f}"
        )
    console.print(
        f"throughput {s['tokens_per_second']:,.0f} tokens/s, peak memory {s['peak_rss_mib']:,.0f} MiB (RSS)"
    )
    console.print(f"adapter: {s['run_dir']}/adapter")
    console.print(f"report: {s['run_dir']}/report.md")
