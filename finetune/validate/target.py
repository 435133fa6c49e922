"""What ``mistral-ft validate TARGET`` checks: resolve TARGET into a :class:`~finetune.validate.subject.Subject`.

TARGET is one of

* a model folder (``config.json`` + safetensors + tokenizer), or a Hugging Face Hub id: loaded by the
  same code as ``mistral-ft train`` (:mod:`finetune.model.load`), so an unreachable / offline id is the
  same readable :class:`FinetuneError`;
* a run folder ``runs/<x>/`` (``recipe.yaml`` + ``adapter/``): the recipe's ``model.base`` is loaded in
  float32 without quantization, the PEFT adapter is applied and merged (``merge_and_unload``), so
  what is validated is exactly the fine-tuned model; the run's own ``tokenizer/`` is used when present;
* a recipe YAML: its ``model.base`` in float32, with the recipe's template choice and training dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from finetune.errors import FinetuneError

from .subject import Subject

def resolve_target(target: Any) -> Subject:
    """Load TARGET (see the module docstring); a Subject is returned as is. Bad targets raise
    :class:`FinetuneError` before any weights are read where that can be known."""
    from finetune.recipe.schema import Recipe

    if isinstance(target, Subject):
        return target
    if isinstance(target, Recipe):
        return _from_recipe(target, "recipe")
    text = str(target)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "recipe.yaml").is_file() and (path / "adapter").is_dir():
            return _from_run(path)
        if (path / "config.json").is_file():
            return _from_model(str(path), "model folder")
        if (path / "adapter_config.json").is_file():
            raise FinetuneError(
                f"{path} holds a PEFT adapter, not a model.",
                hint="Validate the run folder that contains it (recipe.yaml + adapter/), so the adapter is "
                "merged into the base the recipe names.",
            )
        raise FinetuneError(
            f"{path} is neither a model folder (config.json + safetensors) nor a run folder (recipe.yaml + "
            "adapter/).",
            hint="Pass a model folder, a Hub id such as mistralai/Mistral-7B-v0.1, a run folder or a recipe YAML.",
        )
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            from finetune.recipe.load import load_recipe

            return _from_recipe(load_recipe(path), str(path))
        raise FinetuneError(
            f"{path} is a file; validate takes a model folder, a Hub id, a run folder or a recipe YAML."
        )
    parent = path.parent
    if str(parent) not in ("", ".") and parent.is_dir():  # e.g. runs/typo: a local path, not a Hub id
        raise FinetuneError(
            f"No such folder: {path} (its parent {parent} exists, so this is not a Hub id).",
            hint="Check the name; `ls` the parent folder to see what is there.",
        )
    return _from_model(text, "hub")


def _fp32_model_config(base: str, revision: str | None = None, tokenizer: str | None = None,
                       trust_remote_code: bool = False):
    """The ``model:`` section that loads ``base`` for validation: float32, no quantization, sdpa."""
    from finetune.recipe.schema import ModelConfig

    return ModelConfig(base=base, revision=revision, tokenizer=tokenizer, quantization="none",
                       compute_dtype="fp32", attn_implementation="sdpa", trust_remote_code=trust_remote_code)


def _check_model_type(folder: Path) -> None:
    """Refuse a local non-Mistral checkpoint before reading its weights."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise FinetuneError(f"{folder}/config.json cannot be read: {exc}.") from None
    if model_type not in ("mistral", "mixtral"):
        raise FinetuneError(
            f"{folder} is a {model_type!r} model; mistral-ft validate checks Mistral and Mixtral checkpoints "
            "(model_type mistral or mixtral)."
        )


def _load(cfg) -> tuple[Any, Any]:
    from finetune.model.load import load_base_model, load_tokenizer

    if Path(cfg.base).expanduser().is_dir():
        _check_model_type(Path(cfg.base).expanduser())
    tokenizer = load_tokenizer(cfg)
    return load_base_model(cfg), tokenizer


def _from_model(base: str, kind: str) -> Subject:
    model, tokenizer = _load(_fp32_model_config(base))
    return Subject.from_live(model, tokenizer, name=base, kind=kind, training_dtype=_default_training_dtype())


def _from_recipe(recipe, name: str) -> Subject:
    from finetune.model.load import compute_dtype

    m = recipe.model
    model, tokenizer = _load(_fp32_model_config(m.base, m.revision, m.tokenizer, m.trust_remote_code))
    return Subject.from_live(
        model, tokenizer, name=name, kind="recipe", template_choice=recipe.data.template,
        training_dtype=compute_dtype(m), notes=[f"base {m.base} loaded in fp32 without quantization"],
    )


def _from_run(run: Path) -> Subject:
    from transformers import AutoTokenizer

    from finetune.model.load import compute_dtype
    from finetune.recipe.load import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    m = recipe.model
    model, tokenizer = _load(_fp32_model_config(m.base, m.revision, m.tokenizer, m.trust_remote_code))
    if (run / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    merged = _merge_adapter(model, run / "adapter")
    return Subject.from_live(
        merged, tokenizer, name=str(run), kind="run", template_choice=recipe.data.template,
        training_dtype=compute_dtype(m),
        notes=[f"adapter {run / 'adapter'} merged into {m.base} (fp32, unquantized)"],
    )


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """Apply the PEFT adapter in ``adapter`` and fold it into the weights."""
    from peft import PeftModel

    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise FinetuneError(
            f"The adapter in {adapter} does not load onto the recipe's base model: {str(exc).splitlines()[0]}",
            hint="Check that recipe.yaml's model.base is the model the run was trained from.",
        ) from None
    return wrapped.merge_and_unload()


def _default_training_dtype() -> torch.dtype:
    """What ``compute_dtype: auto`` trains in: bf16 on CUDA, fp32 on CPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32
