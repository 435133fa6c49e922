"""The model card (``README.md``) pushed with a run: Hub metadata, then what was trained and how well.

The front matter is huggingface_hub's own :class:`~huggingface_hub.ModelCardData`, so its keys are
the ones the Hub indexes: ``base_model`` (only when the base is a Hub id: a local path is not a valid
value there), ``library_name`` (``peft`` for an adapter, ``transformers`` for a merged model),
``license``, ``tags`` and ``datasets`` (the sources that are Hub data sets).  The body is written from
the run folder alone — ``recipe.yaml``, ``summary.json`` and ``adapter/adapter_config.json`` — and
holds no secret: the token never reaches this module.

Licence: ``--license`` wins; otherwise the base model's own card is read when it is on this machine
(a local base folder's README.md, or the README.md in the Hugging Face cache) and its ``license`` is
reused; otherwise :data:`DEFAULT_LICENSE`, Apache 2.0, the licence of Mistral AI's open-weight
releases (Mistral 7B v0.1-v0.3, Mixtral 8x7B).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finetune.data.sources import looks_local
from finetune.recipe.schema import Recipe

DEFAULT_LICENSE = "apache-2.0"


def render_model_card(
    run_dir: Path, recipe: Recipe, repo_id: str, *, merged: bool, license: str, revision: str | None = None
) -> str:
    """The full README.md for ``repo_id``: YAML front matter, then the card's sections."""
    summary = _read_json(run_dir / "summary.json")
    lora = _lora_settings(run_dir, recipe)
    sections = [
        _title(recipe, repo_id, merged),
        _training_section(recipe, lora),
        _data_section(recipe, summary),
        _metrics_section(summary),
        _usage_section(recipe, summary, repo_id, merged, revision),
        "## Recipe\n\nThe resolved recipe of the run (`recipe.yaml`); `mistral-ft train recipe.yaml` "
        f"reproduces it.\n\n```yaml\n{(run_dir / 'recipe.yaml').read_text().rstrip()}\n```",
    ]
    meta = card_metadata(recipe, merged=merged, license=license)
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def card_metadata(recipe: Recipe, *, merged: bool, license: str):
    """The front matter as a ``ModelCardData`` (keys the Hub understands; empty ones are left out)."""
    from huggingface_hub import ModelCardData

    tags = ["mistral-ft", "qlora" if recipe.model.quantization == "4bit" else "lora", recipe.train.method]
    return ModelCardData(
        base_model=hub_base_model(recipe),
        library_name="transformers" if merged else "peft",
        license=license,
        pipeline_tag="text-generation",
        tags=tags + (["merged"] if merged else []),
        datasets=hub_datasets(recipe) or None,
    )


def hub_base_model(recipe: Recipe) -> str | None:
    """The base model's Hub id, or None when it is a local folder."""
    return None if looks_local(recipe.model.base) else recipe.model.base


def hub_datasets(recipe: Recipe) -> list[str]:
    """The Hub data set ids among the training and validation sources, in order, without repeats."""
    sources = list(recipe.data.sources) + list(recipe.data.validation_sources)
    return list(dict.fromkeys(s.path for s in sources if not looks_local(s.path)))


def resolve_license(recipe: Recipe, explicit: str | None) -> tuple[str, str]:
    """(licence id, where it came from): ``--license``, the base model's card, or the default."""
    if explicit:
        return explicit, "--license"
    found = base_model_license(recipe)
    if found:
        return found, f"the card of {recipe.model.base}"
    return DEFAULT_LICENSE, "default; the base model's card is not on this machine, pass --license to change it"


def base_model_license(recipe: Recipe) -> str | None:
    """The ``license`` in the base model's README.md front matter, when that card is available offline."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    base = recipe.model.base
    if looks_local(base):
        card = Path(base).expanduser() / "README.md"
    else:
        cached = try_to_load_from_cache(base, "README.md", revision=recipe.model.revision)
        card = Path(cached) if isinstance(cached, str) else None
    if card is None or not card.is_file():
        return None
    license = (metadata_load(card) or {}).get("license")
    return license if isinstance(license, str) else None


def _title(recipe: Recipe, repo_id: str, merged: bool) -> str:
    base = recipe.model.base
    base_ref = f"[{base}](https://huggingface.co/{base})" if hub_base_model(recipe) else f"`{base}` (a local folder)"
    what = (
        "the base model with its LoRA adapter merged in: a full model, loadable without peft"
        if merged
        else "a LoRA adapter (peft) for the base model; load the base, then this adapter on top"
    )
    return (
        f"# {repo_id.split('/')[-1]}\n\nFine-tuned from {base_ref} with mistral-ft {_version()} "
        f"({_method_name(recipe)}). This repository holds {what}."
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mistral-ft")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "(source tree)"


def _method_name(recipe: Recipe) -> str:
    adapter = "QLoRA" if recipe.model.quantization == "4bit" else "LoRA"
    return f"{recipe.train.method.upper()}, {adapter}"


def _lora_settings(run_dir: Path, recipe: Recipe) -> dict:
    """The adapter's settings as saved by peft (the truth, also for a run that continued an adapter)."""
    saved = run_dir / "adapter" / "adapter_config.json"
    if saved.is_file():
        return _read_json(saved)
    lora = recipe.lora
    return {
        "r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": lora.target_modules,
        "use_dora": lora.use_dora, "use_rslora": lora.use_rslora, "modules_to_save": lora.modules_to_save,
    }


def _training_section(recipe: Recipe, lora: dict) -> str:
    m, t = recipe.model, recipe.train
    quant = {
        "4bit": "4-bit NF4 with double quantization (bitsandbytes): QLoRA",
        "8bit": "8-bit LLM.int8 (bitsandbytes)",
        "none": "none (weights in the compute dtype)",
    }[m.quantization]
    targets = lora.get("target_modules")
    if isinstance(targets, list):
        targets = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in targets}))
    extras = [name for name in ("use_dora", "use_rslora") if lora.get(name)]
    rows = [
        ("Base model", f"`{m.base}`" + (f" (revision `{m.revision}`)" if m.revision else "")),
        ("Method", f"{t.method.upper()} with TRL, LoRA adapters with peft"),
        ("Quantization of the frozen base", f"{quant}; compute dtype {m.compute_dtype}"),
        ("LoRA rank r / alpha / dropout", f"{lora.get('r')} / {lora.get('lora_alpha')} / {lora.get('lora_dropout')}"),
        ("LoRA target modules", f"{targets}" + (f" ({', '.join(extras)})" if extras else "")),
        ("Trained in full", ", ".join(lora.get("modules_to_save") or []) or "nothing"),
        ("Optimisation", f"{t.optimizer}, lr {t.learning_rate:g} ({t.lr_scheduler}, warm-up {t.warmup_ratio:g}), "
                         f"micro-batch {t.micro_batch_size} x {t.gradient_accumulation_steps} accumulation, seed {t.seed}"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Training\n\n| | |\n|---|---|\n{table}"


def _data_section(recipe: Recipe, summary: dict) -> str:
    lines = ["## Data", ""]
    for role, sources in (("training", recipe.data.sources), ("held-out", recipe.data.validation_sources)):
        for s in sources:
            where = (f"local file `{s.path}` (not uploaded)" if looks_local(s.path)
                     else f"[{s.path}](https://huggingface.co/datasets/{s.path}), split `{s.split}`")
            lines.append(f"- {role}: {where}, format `{s.format}`")
    report = summary.get("data") or {}
    if "train_rows" in report:
        held_out = report.get("eval_rows") or 0
        lines += ["", f"{report['train_rows']} training rows, {held_out} held-out rows; prompt template "
                  f"`{report.get('template', recipe.data.template)}`, loss on {recipe.data.train_on}, "
                  f"max length {recipe.data.max_length} tokens."]
    return "\n".join(lines)


def _metrics_section(summary: dict) -> str:
    """Held-out loss and exact match before → after training, and the training time."""
    rows = []
    if _number(summary.get("eval_loss_before")) and _number(summary.get("eval_loss_after")):
        rows.append(f"| loss | {summary['eval_loss_before']:.4f} | {summary['eval_loss_after']:.4f} |")
    if _number(summary.get("exact_match_before")) and _number(summary.get("exact_match_after")):
        n = summary.get("exact_match_after_n")
        label = f"exact match ({n} prompts, greedy)" if n else "exact match (greedy)"
        rows.append(f"| {label} | {summary['exact_match_before']:.1%} | {summary['exact_match_after']:.1%} |")
    text = ["## Results", ""]
    if rows:
        text += ["Measured on the held-out rows, before and after training:", "",
                 "| held-out | before | after |", "|---|---|---|", *rows, ""]
    else:
        text += ["No held-out metrics were measured in this run.", ""]
    if _number(summary.get("train_seconds")):
        steps = f" ({summary['steps']} steps)" if summary.get("steps") else ""
        text.append(f"Training time: {summary['train_seconds']:.0f} s{steps}.")
    return "\n".join(text).rstrip()


def _usage_section(recipe: Recipe, summary: dict, repo_id: str, merged: bool, revision: str | None) -> str:
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    if merged:
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{rev}, dtype="auto", device_map="auto")',
        ]
    else:
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{recipe.model.base}", dtype="auto", device_map="auto")',
            f'model = PeftModel.from_pretrained(base, "{repo_id}"{rev})',
        ]
    load.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{rev})')
    code = "\n".join(load + [""] + _prompt_lines(recipe, summary))
    return f"## Usage\n\n```python\n{code}\n```"


def _prompt_lines(recipe: Recipe, summary: dict) -> list[str]:
    """Encode a prompt the way the run formatted its training rows."""
    template = str((summary.get("data") or {}).get("template", recipe.data.template))
    if template.startswith("mistral"):
        encode = 'inputs = tokenizer("[INST] Your instruction [/INST]", return_tensors="pt").to(model.device)'
    else:
        encode = ('inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Your instruction"}], '
                  'add_generation_prompt=True, return_dict=True, return_tensors="pt").to(model.device)')
    return [
        encode,
        "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
