"""What ``generate`` and ``chat`` talk to: TARGET → a model, its tokenizer and its prompt template.

TARGET is one of

* a run folder (``recipe.yaml`` + ``adapter/``): the recipe's ``model.base`` is loaded exactly as
  training loaded it (4-bit / 8-bit quantization included; bitsandbytes 4-bit runs on a CPU), the
  peft adapter goes on top, the run's own ``tokenizer/`` decodes, and the recipe's
  ``data.template`` formats prompts, so the model sees prompts in the format it was trained on;
* a model folder (``config.json`` + weights), e.g. a merged run: ``AutoModelForCausalLM``,
  unquantized, with the Mistral ``[INST]`` format unless its tokenizer carries a chat template of
  another family;
* a Hugging Face Hub id, loaded through :mod:`finetune.model.load` so an unreachable or offline id
  is one readable :class:`FinetuneError`.

:func:`read_run` checks a run folder and loads its recipe without touching any weights; ``merge``
and ``validate`` can use it for their own run-folder handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune.errors import FinetuneError
from finetune.recipe.schema import ModelConfig, Recipe

_TARGET_KINDS = "a run folder (recipe.yaml + adapter/), a model folder (config.json + weights) or a Hub id"


@dataclass(frozen=True)
class RunFolder:
    """A finished training run, checked: its folder, resolved recipe, adapter and tokenizer folders."""

    path: Path
    recipe: Recipe
    adapter: Path
    tokenizer: Path | None  # None for runs written without one: the recipe's tokenizer is used


@dataclass
class InferenceTarget:
    """A model ready to generate, and how to talk to it."""

    model: Any
    tokenizer: Any
    template: Any  # finetune.data.template.Template: conversation -> prompt ids
    description: str  # one line for the user: what was loaded
    context: int  # prompt + answer tokens the model handles: max_position_embeddings, or a run's data.max_length


def read_run(path: str | Path) -> RunFolder:
    """Check that ``path`` is a finished run folder and load its recipe (no weights are read)."""
    from finetune.recipe.load import load_recipe

    path = Path(path).expanduser()
    if not path.is_dir():
        raise FinetuneError(f"No such run folder: {path}.",
                            hint="Check the path; runs are written under runs/ by default.")
    if (path / "adapter_config.json").is_file():
        raise _bare_adapter(path)
    if not (path / "recipe.yaml").is_file():
        raise FinetuneError(
            f"{path} is not a run folder: it has no recipe.yaml.",
            hint="Pass the folder `mistral-ft train` wrote (it holds recipe.yaml, adapter/, tokenizer/, summary.json).",
        )
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FinetuneError(
            f"Run folder {path} has recipe.yaml but no trained adapter ({adapter}/adapter_config.json is missing): "
            "the run is still training, stopped early, or failed.",
            hint="Wait for `mistral-ft train` to finish (it writes adapter/ at the end), or pick another run.",
        )
    if not any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise FinetuneError(
            f"Run folder {path}: {adapter} has adapter_config.json but no adapter_model.safetensors (the weights).",
            hint="The run folder is incomplete (copied in part?); copy it again or pick another run.",
        )
    try:
        recipe = load_recipe(path / "recipe.yaml")
    except FinetuneError as err:
        raise FinetuneError(f"Run folder {path}: {err.message}", hint=err.hint) from None
    tokenizer = path / "tokenizer"
    return RunFolder(path, recipe, adapter, tokenizer if tokenizer.is_dir() else None)


def load_for_inference(target: str) -> InferenceTarget:
    """Resolve TARGET (see the module docstring) and load it in eval mode, ready for ``generate``."""
    path = Path(target).expanduser()
    if path.is_dir():
        if (path / "recipe.yaml").is_file() or (path / "adapter").is_dir():
            return _from_run(read_run(path))
        if (path / "config.json").is_file():
            return _from_model(str(path))
        if (path / "adapter_config.json").is_file():
            raise _bare_adapter(path)
        raise FinetuneError(f"{path} is neither a run folder nor a model folder.", hint=f"Pass {_TARGET_KINDS}.")
    if path.exists():
        raise FinetuneError(f"{path} is a file.", hint=f"Pass {_TARGET_KINDS}.")
    parent = path.parent
    if target.startswith((".", "/", "~")) or target.count("/") > 1 or (str(parent) != "." and parent.is_dir()):
        raise FinetuneError(f"No such folder: {path} (and it is not a Hub id of the form org/name).",
                            hint=f"Check the path. TARGET is {_TARGET_KINDS}.")
    return _from_model(target)


def _bare_adapter(path: Path) -> FinetuneError:
    """The error for a peft adapter folder passed on its own: point at the run folder around it."""
    parent = path.parent
    where = f"`{parent}`" if (parent / "recipe.yaml").is_file() else "the run folder that contains it"
    return FinetuneError(
        f"{path} is a bare peft adapter: it does not say which base model, quantization and prompt "
        "template it was trained with.",
        hint=f"Pass the run folder instead: {where} (recipe.yaml + adapter/ + tokenizer/).",
    )


def _device_map() -> dict:
    """Everything on this process's GPU when there is one, else on the CPU."""
    return {"": 0} if torch.cuda.is_available() else {"": "cpu"}


def _ready(model) -> Any:
    """Eval mode with the KV cache on (training loads turn it off)."""
    model.config.use_cache = True
    return model.eval()


def _context(model, trained_length: int | None = None) -> int:
    """The model's position limit, capped at the length it was fine-tuned on when known."""
    limit = getattr(model.config, "max_position_embeddings", None) or 4096
    return min(limit, trained_length) if trained_length else limit


def _from_run(run: RunFolder) -> InferenceTarget:
    """Base as the recipe loads it (quantization included) + the run's adapter, tokenizer and template."""
    from finetune.data.template import select_template
    from finetune.model.adapters import load_adapter
    from finetune.model.load import load_base_model

    cfg = run.recipe.model
    with _about_run(run):
        base = load_base_model(cfg, device_map=_device_map())
        tokenizer, encode_text = _run_tokenizer(run)
    try:
        model = load_adapter(base, str(run.adapter))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise FinetuneError(
            f"The adapter in {run.adapter} does not load onto {cfg.base}: {str(exc).splitlines()[0]}",
            hint="Check that recipe.yaml's model.base is the model the run was trained from.",
        ) from None
    template = select_template(tokenizer, run.recipe.data.template, encode_text)
    quant = "" if cfg.quantization == "none" else f" ({cfg.quantization})"
    return InferenceTarget(
        _ready(model), tokenizer, template, f"run {run.path}: {cfg.base}{quant} + adapter, template {template.name}",
        _context(base, run.recipe.data.max_length),
    )


class _about_run:
    """Prefix a FinetuneError raised while loading what the recipe names with the run folder."""

    def __init__(self, run: RunFolder):
        self.run = run

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, FinetuneError):
            raise FinetuneError(f"Run folder {self.run.path} (recipe.yaml): {exc.message}", hint=exc.hint) from None
        return False


def _run_tokenizer(run: RunFolder):
    """The run's tokenizer and the prompt-segment encoder training used.

    A run's ``tokenizer/`` is saved without the SentencePiece ``tokenizer.model`` that makes prompt
    segments token-exact with mistral-common; the tokenizer the recipe names (loaded as training
    loaded it) usually has it, and is used for encoding when its vocabulary is the run's.
    """
    from transformers import AutoTokenizer

    from finetune.data.text_encoder import sentencepiece_file, text_encoder
    from finetune.model.load import load_tokenizer

    if run.tokenizer is None:
        tokenizer = load_tokenizer(run.recipe.model)
        return tokenizer, text_encoder(tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if sentencepiece_file(tokenizer) is not None:
        return tokenizer, text_encoder(tokenizer)
    try:
        source = load_tokenizer(run.recipe.model)
    except FinetuneError:  # the run's own tokenizer is enough to generate
        return tokenizer, text_encoder(tokenizer)
    if sentencepiece_file(source) is not None and source.get_vocab() == tokenizer.get_vocab():
        return tokenizer, text_encoder(source)
    return tokenizer, text_encoder(tokenizer)


def _from_model(name: str) -> InferenceTarget:
    """A model folder or Hub id, unquantized in the compute dtype (bf16 on a GPU, fp32 on a CPU)."""
    from finetune.model.load import load_base_model, load_tokenizer

    cfg = ModelConfig(base=name, quantization="none")
    try:
        tokenizer = load_tokenizer(cfg)
        model = load_base_model(cfg, device_map=_device_map())
    except FinetuneError as err:
        raise FinetuneError(f"TARGET {name}: {err.message}", hint=f"Pass {_TARGET_KINDS} in the local "
                            f"Hugging Face cache (download it once with `hf download {name}`).") from None
    template = _model_template(tokenizer)
    description = f"model {name}, template {template.name}"
    return InferenceTarget(_ready(model), tokenizer, template, description, _context(model))


def _model_template(tokenizer):
    """Mistral's own [INST] format for Mistral tokenizers; another family's chat template otherwise.

    A Mistral chat template (it writes ``[INST]``) is replaced by the built-in format, which is
    token-exact with mistral-common; a template without ``[INST]`` (ChatML, Llama 3, ...) is the
    model's own format and is used as is.
    """
    from finetune.data.template import select_template

    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str) and chat_template and "[INST]" not in chat_template:
        return select_template(tokenizer, "chat_template")
    return select_template(tokenizer, "mistral")
