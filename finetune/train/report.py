"""``report.md``: a run explained in one page, written at the end of ``train``.

What a reader of the run folder asks first: what was trained on what (a digest of the recipe), what
the data looked like (the data report and ``data_lengths.png``), how the loss went (``loss.png``),
how fast and how big (throughput, peak memory, wall time), and what it bought (the held-out figures
before and after).  Everything is read from the summary and recipe the run already wrote.
"""

from __future__ import annotations

import hashlib
import resource
from pathlib import Path

import torch

from finetune.recipe.schema import Recipe


def peak_rss_kib() -> float:
    """This program's peak resident memory, in KiB: VmHWM on Linux.  Not ``ru_maxrss``, which Linux carries
    over an exec from the process that spawned us (a launcher, a test runner) and so can report its size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_memory() -> dict:
    """Peak memory of this process: resident set (CPU) and, with CUDA, the most GPU memory allocated."""
    out = {"peak_rss_mib": round(peak_rss_kib() / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_report(run_dir: Path, recipe: Recipe, summary: dict, data_text: str) -> Path:
    """Write ``report.md`` from the run's summary; returns its path."""
    lines = [f"# {recipe.output.name}: {summary.get('status', 'unknown')}", ""]
    lines += _recipe_digest(run_dir, recipe, summary)
    lines += ["", "## Data", "", "```", data_text.rstrip(), *[f"  {line}" for line in _length_lines(summary)], "```"]
    if (run_dir / "data_lengths.png").is_file():
        lines += ["", "![tokens per row](data_lengths.png)"]
    lines += ["", "## Training", ""]
    lines += _training_lines(summary)
    if (run_dir / "loss.png").is_file():
        lines += ["", "![loss](loss.png)"]
    results = _results_table(summary)
    if results:
        lines += ["", "## Held-out results", "", *results]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe_digest(run_dir: Path, recipe: Recipe, summary: dict) -> list[str]:
    recipe_file = run_dir / "recipe.yaml"
    digest = hashlib.sha256(recipe_file.read_bytes()).hexdigest()[:12] if recipe_file.is_file() else "-"
    m, lora, t = recipe.model, recipe.lora, recipe.train
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    return [
        f"- recipe: `recipe.yaml` (sha256 {digest}), method {t.method}",
        f"- base: `{m.base}`, quantization {m.quantization}, compute dtype {m.compute_dtype}",
        f"- LoRA: r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, targets {lora.target_modules}"
        + (f", trained in full: {', '.join(lora.modules_to_save)}" if lora.modules_to_save else ""),
        f"- optimisation: {t.optimizer}, lr {t.learning_rate:g} ({t.lr_scheduler}, warm-up {t.warmup_ratio:g}), "
        f"{length}, seed {t.seed}",
        f"- batch: {summary.get('micro_batch_size')} rows × {summary.get('gradient_accumulation_steps')} accumulation "
        f"× {summary.get('processes')} process(es) = {summary.get('effective_batch_size')} rows per step "
        f"({summary.get('parallelism')})",
    ]


def _length_lines(summary: dict) -> list[str]:
    lengths = summary.get("lengths") or {}
    if not lengths:
        return []
    return [
        f"tokens per row: min {lengths['min']:,}, median {lengths['median']:,}, p95 {lengths['p95']:,}, "
        f"max {lengths['max']:,}",
        f"tokens carrying loss: {lengths['trained_tokens']:,} of {lengths['tokens']:,} ({lengths['trained_share']:.1%})",
        f"steps per epoch: {lengths['steps_per_epoch']:,}",
    ]


def _training_lines(summary: dict) -> list[str]:
    rows = [
        ("steps", f"{summary.get('steps', 0):,}"),
        ("training time", f"{summary.get('train_seconds', 0):.1f} s"),
        ("wall time", f"{summary['wall_seconds']:.1f} s" if "wall_seconds" in summary else "-"),
        ("throughput", f"{summary['tokens_per_second']:,.0f} tokens/s" if summary.get("tokens_per_second") else "-"),
        ("peak memory (RSS, main process)", f"{summary['peak_rss_mib']:,.0f} MiB" if "peak_rss_mib" in summary else "-"),
        ("mean training loss over the run", f"{summary['train_loss']:.4f}" if "train_loss" in summary else "-"),
    ]
    if "peak_gpu_allocated_mib" in summary:
        rows.append(("peak GPU memory allocated", f"{summary['peak_gpu_allocated_mib']:,.0f} MiB"))
    return ["| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]


_RESULTS = (
    ("eval_loss", "held-out loss", "{:.4f}"),
    ("exact_match", "held-out exact match", "{:.1%}"),
    ("preference_accuracy", "preference accuracy", "{:.1%}"),
    ("logp_margin", "log-prob margin (chosen − rejected)", "{:+.2f}"),
)


def _results_table(summary: dict) -> list[str]:
    rows = [
        f"| {label} | {fmt.format(summary[f'{key}_before'])} | {fmt.format(summary[f'{key}_after'])} |"
        for key, label, fmt in _RESULTS
        if f"{key}_before" in summary and f"{key}_after" in summary
    ]
    return ["| | before | after |", "|---|---|---|", *rows] if rows else []
