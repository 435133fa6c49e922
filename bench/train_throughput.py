"""Training throughput and memory: mistral-ft vs a plain TRL SFTTrainer + peft script, side by side.

One invocation builds the fixed work once, then runs each variant in its own fresh Python process
(so peak RSS is that variant's alone) and reports the figures and their ratios to the baseline as
JSON and as a markdown table.

The fixed CPU work (from issue 7, so other toolkits can be measured on the same machine):

* model: a tiny Mistral with random weights: 4 layers, hidden 256, intermediate 768, 8 heads,
  2 KV heads, sliding window 256, untied embeddings, Mistral 7B v0.1's real tokenizer (vocab 32000);
* data: 128 rows in the instruct-v3 layout (prompt / response / source) whose word counts are
  log-uniform in [16, 1024], a third prompt and the rest response (written by this script);
* QLoRA: NF4 with double quantization, fp32 compute; LoRA r 16, alpha 32, dropout 0, all linear layers;
* micro-batch 4, one epoch, lr 2e-4 (linear schedule, no warm-up), max length 1024 (longer rows
  truncated), no gradient checkpointing, seed 0.

Variants (the first one run is the baseline the ratios refer to):

* ``trl-defaults`` — what a hand-written script does: the rows as prompt/completion, SFTTrainer with
  ``peft_config`` and its own defaults except the fixed work's settings above;
* ``mistral-ft`` — the builders ``mistral-ft train`` calls (data, model, adapters, trainer) on the
  equivalent recipe, with its defaults;
* ablations of mistral-ft, named by what they take away: ``-sdpa`` (transformers' ``sdpa`` instead
  of ``sdpa_windowed``), ``-shuffled`` (``data.group_by_length: false``: plain shuffled batches),
  ``-full-logits`` (the model's own loss over full ``[tokens × vocab]`` logits instead of the chunked
  loss on trained positions); and ``mistral-ft-packed`` (``data.packing: true`` instead of length
  grouping).  The default order adds mistral-ft's changes one at a time, so each row's gain over the
  row above is what that change bought.

Measured per variant: epoch seconds (``trainer.train()`` wall time), trained (loss-carrying) tokens
per second, padding fraction of the batches, peak RSS of the process.  With ``--repeat N`` the
variants run N rounds, interleaved (A B C A B C ...), so that a slow spell of a shared machine hits
every variant alike; each variant reports its fastest epoch and its largest peak RSS.

    python bench/train_throughput.py                       # every variant, table on stdout
    python bench/train_throughput.py --repeat 2 --json bench/results/train_throughput_cpu.json \
        --markdown bench/results/train_throughput_cpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

VARIANTS = ("trl-defaults", "mistral-ft-sdpa-shuffled-full-logits", "mistral-ft-sdpa-shuffled", "mistral-ft-sdpa",
            "mistral-ft", "mistral-ft-packed")
ROWS, MIN_WORDS, MAX_WORDS = 128, 16, 1024
MICRO_BATCH, LR, MAX_LENGTH, SEED = 4, 2e-4, 1024, 0
WORDS = ("river stone lamp garden winter paper signal orange market engine harbor cloud letter number "
         "window forest silver kitten bridge candle ladder marble pepper rocket saddle thunder velvet "
         "walnut yellow zipper anchor basket cactus dragon feather glacier hammer island jacket kettle "
         "lemon magnet needle oyster pillow quartz ribbon shadow tunnel umbrella violet wagon").split()


# ---------------------------------------------------------------------- the fixed work


def write_work(workdir: Path) -> tuple[Path, Path]:
    """The tiny model folder and the 128-row instruct-v3 file (both deterministic)."""
    from finetune.model.tiny import build_tiny_model

    model_dir = workdir / "tiny-mistral-bench"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(
            model_dir, arch="mistral", tokenizer="v1", seed=SEED, hidden_size=256, intermediate_size=768,
            num_layers=4, num_heads=8, num_kv_heads=2, sliding_window=256,  # untied: tiny_config default
        )
    data = workdir / "bench.jsonl"
    rng = random.Random(SEED)
    with data.open("w") as f:
        for _ in range(ROWS):
            n = round(math.exp(rng.uniform(math.log(MIN_WORDS), math.log(MAX_WORDS))))
            words = [rng.choice(WORDS) for _ in range(n)]
            cut = max(1, n // 3)
            f.write(json.dumps({"prompt": " ".join(words[:cut]), "response": " ".join(words[cut:]),
                                "source": "bench"}) + "\n")
    return model_dir, data


# ---------------------------------------------------------------------- variants (run in a worker process)


def run_trl_defaults(model_dir: Path, data: Path, out: Path) -> dict:
    """A plain TRL script: SFTTrainer(model, peft_config=LoraConfig(...)) with TRL's defaults."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list(
        [{"prompt": f"[INST] {r['prompt']} [/INST]", "completion": f" {r['response']}"} for r in rows]
    )
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=MICRO_BATCH, num_train_epochs=1, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, max_length=MAX_LENGTH, gradient_checkpointing=False,
        bf16=False, use_cpu=True, seed=SEED, report_to=[], save_strategy="no", disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
    )
    return timed_epoch(trainer, trainer.train_dataset["completion_mask"])


def run_mistral_ft(model_dir: Path, data: Path, out: Path, variant: str) -> dict:
    """mistral-ft's training path on the equivalent recipe: the same builders ``train`` calls, in order,
    without the run-folder extras (pre-training checks, held-out evaluation, plots) that are not the step.
    The variant's name says which of its changes to take away (see the module docstring)."""
    from transformers import set_seed

    from finetune.data import prepare_data
    from finetune.model.adapters import attach_lora
    from finetune.model.load import load_base_model, load_tokenizer
    from finetune.recipe.schema import Recipe
    from finetune.train.sft import build_sft_trainer

    recipe = Recipe.model_validate({
        "model": {"base": str(model_dir), "quantization": "4bit", "compute_dtype": "fp32",
                  "attn_implementation": "sdpa" if "-sdpa" in variant else "sdpa_windowed"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"sources": [{"path": str(data), "format": "instruct-v3"}], "validation_ratio": 0,
                 "template": "mistral", "max_length": MAX_LENGTH, "overlong": "truncate", "seed": SEED,
                 "group_by_length": "-shuffled" not in variant, "packing": "-packed" in variant},
        "train": {"learning_rate": LR, "lr_scheduler": "linear", "warmup_ratio": 0, "epochs": 1,
                  "micro_batch_size": MICRO_BATCH, "gradient_checkpointing": False, "seed": SEED},
        "eval": {"loss": False},
    })
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe.data, tokenizer)
    model = load_base_model(recipe.model)
    set_seed(SEED)
    model = attach_lora(model, recipe.lora, gradient_checkpointing=False)
    trainer = build_sft_trainer(recipe, model, tokenizer, prepared, out, callbacks=[], use_cpu=True)
    if "-full-logits" in variant:
        trainer.next_token_loss = full_logits_loss
    return timed_epoch(trainer, prepared.train["completion_mask"])


def timed_epoch(trainer, completion_masks) -> dict:
    """Train one epoch and return its seconds, loss-carrying tokens, loss and padding fraction."""
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return {"epoch_seconds": seconds, "trained_tokens": sum(sum(m) for m in completion_masks),
            "train_loss": result.training_loss, "padding_fraction": padding_fraction(trainer)}


def full_logits_loss(model, inputs, num_items_in_batch):
    """The model's own loss: logits for every position, then transformers' ForCausalLMLoss."""
    outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
    return outputs.loss, outputs


def padding_fraction(trainer) -> float:
    """Fraction of the token slots in an epoch's batches that are padding (the batches, drawn again)."""
    pad = total = 0
    for batch in trainer.get_train_dataloader():
        slots = batch["input_ids"].numel()
        real = batch["num_real_tokens"] if "num_real_tokens" in batch else batch["attention_mask"].sum()
        pad += slots - int(real)
        total += slots
    return pad / total


def worker(variant: str, workdir: Path) -> None:
    """Run one variant and print its figures as one JSON line."""
    from finetune.train.report import peak_rss_kib

    model_dir, data = workdir / "tiny-mistral-bench", workdir / "bench.jsonl"
    out = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=workdir))
    if variant == "trl-defaults":
        figures = run_trl_defaults(model_dir, data, out)
    else:
        figures = run_mistral_ft(model_dir, data, out, variant)
    figures["peak_rss_gb"] = peak_rss_kib() / 2**20  # this program's own peak (VmHWM), not its launcher's
    figures["trained_tokens_per_s"] = figures["trained_tokens"] / figures["epoch_seconds"]
    print("RESULT " + json.dumps({"variant": variant, **figures}))


# ---------------------------------------------------------------------- orchestration


def measure(variant: str, workdir: Path, threads: int) -> dict:
    """Run ``variant`` in a fresh interpreter and parse its result line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--workdir", str(workdir)],
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def best_of(runs: list[dict]) -> dict:
    """One variant's rounds as one row: the fastest epoch, the largest peak RSS, every epoch's seconds."""
    fastest = min(runs, key=lambda r: r["epoch_seconds"])
    return {**fastest, "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "epoch_seconds_each_round": [round(r["epoch_seconds"], 2) for r in runs]}


def environment(threads: int) -> dict:
    """What the figures depend on: library versions, the CPU, the threads."""
    import platform
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    libraries = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate")
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            **{name: version(name) for name in libraries}}


def markdown(results: list[dict]) -> str:
    """The figures and ratios to the first (baseline) variant as a markdown table."""
    base = results[0]
    lines = ["| variant | epoch s | trained tok/s | padding | peak RSS GB | speed × | memory × |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['epoch_seconds']:.1f} | {r['trained_tokens_per_s']:.0f} | "
            f"{r['padding_fraction']:.1%} | {r['peak_rss_gb']:.2f} | "
            f"{r['trained_tokens_per_s'] / base['trained_tokens_per_s']:.2f} | "
            f"{r['peak_rss_gb'] / base['peak_rss_gb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, baseline first")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mistral-ft-bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every variant, interleaved")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    write_work(args.workdir)
    variants = args.variants.split(",")
    rounds = [[measure(v, args.workdir, args.threads) for v in variants] for _ in range(args.repeat)]
    results = [best_of([r[i] for r in rounds]) for i in range(len(variants))]
    table = markdown(results)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"environment": environment(args.threads), "rounds": args.repeat, "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
