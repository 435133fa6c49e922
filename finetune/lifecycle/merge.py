"""``mistral-ft merge RUN``: fold a run's LoRA adapter into its base and write a plain model folder,
then show that it computes what the live adapter model computes.

The folder (default ``RUN/merged``; it must be absent or empty) holds safetensors shards (5 GB,
``model.safetensors.index.json`` as transformers writes it), ``config.json`` (``dtype`` set, no
``quantization_config``), the base's ``generation_config.json``, the run's tokenizer and
``merge_report.json``: plain ``AutoModelForCausalLM.from_pretrained`` / vLLM / TGI loads it, with
standard tensor names (no peft prefixes, no ``base_layer``).

Decisions, and why:

* **dtype**: bf16 unless ``--dtype`` says otherwise, whatever the recipe computed in: it is what
  Mistral ships and what serving stacks run.  fp32 keeps every bit of the merge (for checks), fp16
  is for GPUs without bf16.
* **QLoRA runs merge onto the round-tripped weights**, i.e. what bitsandbytes made of the base at
  training time (NF4 or int8, exactly as transformers quantized it; :mod:`merge_weights`), because
  that is what the adapter learned to correct.  Measured on the quickstart run (fp32 merge; logits
  on the 8 check prompts, 310 positions, against the live 4-bit adapter model computed through
  bitsandbytes' fp32 dequantize path): the round trip gives max |Δlogit| 6.7e-6 (mean 8.0e-7);
  merging onto the original weights gives 0.70 (mean 0.074, 1.06 % of the mean |logit|).  No flag:
  there is no reason to ship the worse model.  8-bit runs are round-tripped through LLM.int8's
  row-wise absmax the same way.
* **Memory**: the base is streamed tensor by tensor from its safetensors files and written shard
  by shard (:mod:`shards`); peak memory is about one output shard plus one tensor, never two
  copies of the model.
* **The check**: the live model (base loaded as the recipe loads it, 4-bit included, + peft
  adapter) runs first, then the merged folder (in the recipe's compute dtype), one at a time, on
  up to 8 prompts + reference answers from the recipe's held-out data (fixed prompts when the data
  cannot be read).  The merge fails (exit 1) when mean |Δlogit| exceeds a share of the mean
  |logit| that depends on the numerics (:data:`TOLERANCES`): 0.5 % when both compute in fp32 (the
  quickstart's bf16 merge: 0.036 %, most of it bitsandbytes' bf16 CPU kernel in the live model),
  2 % in bf16 / fp16 (0.1 % on the quickstart), 3 % for 8-bit bases, whose live model quantizes
  every activation to int8 (1.0 % for the tiny base alone, with no adapter), which no merge can
  reproduce.  A wrong scale, a missed module or a garbage merge is far above all three.
* **Provenance** goes into the same ``merge_report.json`` (run, base, adapter sha256, dtype, what
  was round-tripped, replaced or untied, and the check): one small file, not two.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from finetune.checksum import file_sha256
from finetune.errors import FinetuneError
from finetune.lifecycle.shards import DEFAULT_SHARD_SIZE, Checkpoint, write_shards
from finetune.lifecycle.target import RunFolder, read_run

# Allowed mean |Δlogit| / mean |logit| between the merged and the live model, by the check's numerics.
TOLERANCES = {"fp32": 5e-3, "16-bit": 2e-2, "8bit": 3e-2}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REPORT = "merge_report.json"
_CHECK_PROMPTS = 8
_ROWS_READ = 200  # per data source, to find the check prompts without tokenizing a whole data set
# What merge reads from a Hub base (transformers' own shards, not e.g. Mistral's consolidated.safetensors).
_HUB_FILES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
              "tokenizer.model")
_FIXED_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
                  "Explain what a hash table is in two sentences.", "List three prime numbers."]


def merge(run: str | Path, output: str | Path | None = None, dtype: str = "bf16",
          console: Console | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> int:
    """Merge, check, write the report; 0 when the merged model matches the live one, else 1."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    with console.status("merging the adapter into the base, tensor by tensor"):
        out, report = merge_run(run, output, dtype, max_shard_size)
    report["merge_seconds"] = round(time.perf_counter() - started, 2)
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")  # provenance, even if the check cannot run
    console.print(f"merged {report['run']}/adapter into {report['base']} ({report['base_weights']}) -> {out} "
                  f"({dtype}, {len(report['files'])} file(s), {report['lora_merged']} LoRA weights, "
                  f"{len(report['replaced'])} replaced)")
    with console.status("comparing logits with the live adapter model"):
        run_folder = read_run(run)
        prompts, origin = check_prompts(run_folder)
        limit, numerics = tolerance(run_folder.recipe.model)
        reference = live_logits(run_folder, prompts)  # one model at a time: the check never holds both
        logits = folder_logits(out, run_folder.recipe.model, prompts)
        report["check"] = {"prompts": len(prompts), **compare(reference, logits, limit), "prompts_from": origin,
                           "numerics": numerics}
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    check = report["check"]
    line = (f"logits vs the live adapter model ({check['prompts']} prompts, {check['positions']} positions, "
            f"{origin}): max |Δ| {check['max_abs_diff']:.2e}, mean |Δ| {check['mean_abs_diff']:.2e} = "
            f"{100 * check['relative_mean_diff']:.2g} % of mean |logit| (tolerance {100 * limit:g} %, {numerics}), "
            f"top-1 agreement {check['top1_agreement']:.1%}")
    console.print(line, highlight=False)
    if not check["passed"]:
        console.print(f"[bold red]merge check failed:[/] the merged model in {out} does not reproduce the live "
                      f"adapter model (details in {out / REPORT}); the folder is kept for inspection, delete it "
                      "before merging again.", highlight=False)
        return 1
    console.print(f"[bold green]done[/] {out} (report: {out / REPORT})", highlight=False)
    return 0


def merge_run(run: str | Path, output: str | Path | None = None, dtype: str = "bf16",
              max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> tuple[Path, dict]:
    """Write the merged model folder (no check) and return it with its provenance report."""
    from finetune.lifecycle.merge_weights import LiveLayout, plan_merge, read_adapter

    if dtype not in DTYPES:
        raise FinetuneError(f"--dtype {dtype!r} is not a merge dtype.", hint=f"Choose one of {', '.join(DTYPES)}.")
    folder = read_run(run)
    out = _free_output(Path(output) if output is not None else folder.path / "merged")
    adapter = read_adapter(folder.adapter)
    cfg = folder.recipe.model
    base_dir = base_folder(cfg)
    plan = plan_merge(Checkpoint(base_dir), adapter, LiveLayout(base_dir, cfg), DTYPES[dtype])
    out.mkdir(parents=True, exist_ok=True)
    try:
        files = write_shards(out, plan.specs, plan.produce, max_shard_size)
        _write_config(base_dir, cfg, out, DTYPES[dtype], plan.untied)
        _write_tokenizer(folder, base_dir, out)
    except BaseException:  # never leave a half-written model behind; the folder was empty or absent
        shutil.rmtree(out, ignore_errors=True)
        raise
    weights = {"4bit": "NF4 round trip", "8bit": "LLM.int8 round trip", "none": "checkpoint"}[cfg.quantization]
    report = {"run": str(folder.path), "base": cfg.base, "quantization": cfg.quantization, "base_weights": weights,
              "dtype": dtype, "adapter_sha256": file_sha256(folder.adapter / "adapter_model.safetensors"),
              "files": files, **plan.counts}
    return out, report


def base_folder(cfg) -> Path:
    """The base checkpoint's folder: ``model.base`` itself, or its Hugging Face cache snapshot."""
    from finetune.model.load import friendly_hub_errors, local_or_hub

    name = local_or_hub(cfg.base)
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    with friendly_hub_errors(cfg.base, "model"):
        return Path(snapshot_download(cfg.base, revision=cfg.revision, allow_patterns=list(_HUB_FILES)))


def _free_output(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FinetuneError(f"Output folder {path} already exists and is not empty; merge never overwrites a model.",
                            hint="Pass another --output, or delete that folder if you no longer need it.")
    return path


def _write_config(base_dir: Path, cfg, out: Path, dtype: torch.dtype, untied: list[str]) -> None:
    """The base's config with the merged dtype (and untied embeddings when the adapter split them)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=cfg.trust_remote_code)
    config.dtype = dtype
    if untied:
        config.tie_word_embeddings = False
    config.save_pretrained(out)
    if (base_dir / "generation_config.json").is_file():
        shutil.copyfile(base_dir / "generation_config.json", out / "generation_config.json")


def _write_tokenizer(run: RunFolder, base_dir: Path, out: Path) -> None:
    """The run's tokenizer files (or, for a run saved without one, the recipe's tokenizer), plus the
    SentencePiece ``tokenizer.model`` of the tokenizer's source folder, which ``save_pretrained``
    drops and which keeps prompt encoding token-exact with mistral-common when the merged folder is
    trained or validated again."""
    if run.tokenizer is not None:
        for file in sorted(run.tokenizer.iterdir()):
            if file.is_file():
                shutil.copyfile(file, out / file.name)
    else:
        from finetune.model.load import load_tokenizer

        load_tokenizer(run.recipe.model).save_pretrained(out)
    source = base_dir if run.recipe.model.tokenizer is None else Path(run.recipe.model.tokenizer).expanduser()
    if (source / "tokenizer.model").is_file() and not (out / "tokenizer.model").exists():
        shutil.copyfile(source / "tokenizer.model", out / "tokenizer.model")


def check_prompts(run: RunFolder) -> tuple[list[list[int]], str]:
    """Token ids to compare the two models on: held-out prompts + their reference answers from the
    recipe's data (read from the first rows of each source), or fixed prompts when there are none."""
    from finetune.data import prepare_data
    from finetune.model.load import load_tokenizer

    tokenizer = load_tokenizer(run.recipe.model)
    data = run.recipe.data
    capped = data.model_copy(update={"sources": _first_rows(data.sources),
                                     "validation_sources": _first_rows(data.validation_sources)})
    try:
        rows = prepare_data(capped, tokenizer).eval_prompts[:_CHECK_PROMPTS]
    except FinetuneError:
        rows = []
    if rows:
        origin = "data.validation_sources" if data.validation_sources else "held-out rows of data.sources"
        return [list(r.prompt_ids) + tokenizer(r.reference, add_special_tokens=False).input_ids for r in rows], origin
    return [tokenizer(f"[INST] {text} [/INST]").input_ids for text in _FIXED_PROMPTS], "fixed prompts"


def _first_rows(sources: list) -> list:
    return [s.model_copy(update={"max_rows": min(s.max_rows or _ROWS_READ, _ROWS_READ)}) for s in sources]


def tolerance(cfg) -> tuple[float, str]:
    """The allowed mean |Δlogit| / mean |logit| for a run, and why (see the module docstring)."""
    from finetune.model.load import compute_dtype

    if cfg.quantization == "8bit":
        return TOLERANCES["8bit"], "LLM.int8 quantizes activations"
    if compute_dtype(cfg) != torch.float32:
        return TOLERANCES["16-bit"], "16-bit compute"
    return TOLERANCES["fp32"], "fp32 compute"


def live_logits(run: RunFolder, prompts: list[list[int]]) -> torch.Tensor:
    """Logits of the live adapter model: the base loaded as the recipe loads it (4-bit included) + peft."""
    from finetune.model.adapters import load_adapter
    from finetune.model.load import load_base_model

    model = load_adapter(load_base_model(run.recipe.model, device_map=_device_map()), str(run.adapter))
    try:
        return _logits(model, prompts)
    finally:
        del model
        gc.collect()


def folder_logits(folder: Path, cfg, prompts: list[list[int]]) -> torch.Tensor:
    """Logits of a plain model folder (the merged one), computed in the recipe's compute dtype."""
    from transformers import AutoModelForCausalLM

    from finetune.model.load import compute_dtype
    from finetune.model.windowed_attention import attention_backend

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=compute_dtype(cfg), device_map=_device_map(),
                                                 attn_implementation=attention_backend(cfg.attn_implementation))
    try:
        return _logits(model, prompts)
    finally:
        del model
        gc.collect()


def compare(reference: torch.Tensor, logits: torch.Tensor, limit: float) -> dict:
    """The figures of the check: |Δlogit| max and mean, relative to the mean |logit|, top-1 agreement."""
    diff = (logits - reference).abs()
    relative = float(diff.mean() / reference.abs().mean())
    return {"positions": int(reference.shape[0]), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "mean_abs_logit": float(reference.abs().mean()),
            "relative_mean_diff": relative,
            "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
            "tolerance": limit, "passed": relative <= limit}


def _device_map() -> dict:
    return {"": 0} if torch.cuda.is_available() else {"": "cpu"}


@torch.no_grad()
def _logits(model, prompts: list[list[int]]) -> torch.Tensor:
    """Float32 CPU logits of every position of every prompt, stacked: ``[positions, vocab]``."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu() for ids in prompts]
    return torch.cat(out)
