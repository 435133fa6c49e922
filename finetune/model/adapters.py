"""LoRA adapters (peft): the recipe's ``lora:`` section → a peft config → a trainable model.

``all-linear`` adapts every ``nn.Linear`` except the output head.  In Mixtral the router is not a
linear layer in current transformers and the experts are fused parameters, so ``all-linear`` adapts
the attention projections and leaves the router alone, which is what MoE fine-tuning wants.
"""

from __future__ import annotations

from finetune.recipe.schema import LoraConfig


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


def attach_lora(model, cfg: LoraConfig, gradient_checkpointing: bool):
    """Freeze ``model`` and wrap it with fresh LoRA adapters; quantized bases are prepared first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config(cfg))


def load_adapter(base_model, adapter_dir: str, trainable: bool = False):
    """Wrap ``base_model`` with the saved adapter in ``adapter_dir`` (a run folder or PEFT folder)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)
