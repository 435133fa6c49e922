"""LoRA adapters (peft): the recipe's ``lora:`` section → a peft config → a trainable model.

``all-linear`` adapts every ``nn.Linear`` except the output head.  In Mixtral the router is not a
linear layer in current transformers and the experts are fused parameters, so ``all-linear`` adapts
the attention projections and leaves the router alone, which is what MoE fine-tuning wants.

A run can also start from a trained adapter (``model.adapter``: a run folder or a peft folder):
:func:`resume_lora` loads it trainable, and :func:`add_frozen_copy` loads it a second time, frozen,
under another name, which is how DPO keeps its reference policy next to the policy on one base model
(two small adapters, never two copies of the base).
"""

from __future__ import annotations

from pathlib import Path

from finetune.errors import FinetuneError
from finetune.recipe.schema import LoraConfig

POLICY = "default"  # peft's name for the first adapter: what save_pretrained writes at the folder's root
REFERENCE = "reference"  # the frozen copy DPO scores against when starting from a trained adapter


def peft_config(cfg: LoraConfig):
    """The ``peft.LoraConfig`` for a causal LM."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        exclude_modules=cfg.exclude_modules or None,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        modules_to_save=cfg.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def prepare_for_training(model, gradient_checkpointing: bool):
    """Freeze ``model`` for adapter training: quantized bases through peft, checkpointing when asked."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def attach_lora(model, cfg: LoraConfig, gradient_checkpointing: bool):
    """Freeze ``model`` and wrap it with fresh LoRA adapters; quantized bases are prepared first."""
    from peft import get_peft_model

    return get_peft_model(prepare_for_training(model, gradient_checkpointing), peft_config(cfg))


def adapter_dir(path: str | Path) -> Path:
    """The peft folder ``model.adapter`` names: a run folder's ``adapter/``, or the folder itself.

    Checked before anything slow is loaded, so a typo fails in a second.
    """
    given = Path(path).expanduser()
    for candidate in (given / "adapter", given):
        if (candidate / "adapter_config.json").is_file():
            if not any((candidate / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
                raise FinetuneError(
                    f"model.adapter {str(path)!r}: {candidate} has adapter_config.json but no "
                    "adapter_model.safetensors (the weights).",
                    hint="Point model.adapter at a complete run folder or peft adapter folder.",
                )
            return candidate
    what = "no such folder" if not given.exists() else "neither a run folder (with adapter/) nor a peft adapter folder"
    raise FinetuneError(
        f"model.adapter {str(path)!r}: {what} (resolved to {given.resolve()}); it must hold "
        "adapter_config.json, directly or in adapter/.",
        hint="Use the folder `mistral-ft train` wrote (runs/<name>-<timestamp>) or a folder saved with peft's "
        "save_pretrained; relative paths are resolved from the current directory.",
    )


def resume_lora(model, path: Path, gradient_checkpointing: bool):
    """Freeze ``model`` and wrap it with the trained adapter at ``path``, trainable, as the policy."""
    model = prepare_for_training(model, gradient_checkpointing)
    with _adapter_mismatch(path):
        return load_adapter(model, str(path), trainable=True)


def add_frozen_copy(peft_model, path: Path, name: str = REFERENCE) -> None:
    """Load the adapter at ``path`` again under ``name``, frozen; the policy stays active and trainable.

    peft freezes every parameter when it adds an adapter in inference mode, the policy's included;
    making the policy the active adapter again marks it (and only it) trainable.
    """
    with _adapter_mismatch(path):
        peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    peft_model.set_adapter(POLICY)


def load_adapter(base_model, adapter_dir: str, trainable: bool = False):
    """Wrap ``base_model`` with the saved adapter in ``adapter_dir`` (a run folder or PEFT folder)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)


class _adapter_mismatch:
    """An adapter trained on another base fails with a size mismatch deep in torch: say that instead."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or "size mismatch" not in str(exc):
            return False
        raise FinetuneError(
            f"model.adapter {self.path}: its weights do not fit model.base (different layer shapes); it was "
            "trained on another base model.",
            hint="Set model.base to the base the adapter was trained on (adapter_config.json, "
            "base_model_name_or_path), or start from a fresh adapter by removing model.adapter.",
        ) from None
