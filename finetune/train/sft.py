"""Supervised fine-tuning through TRL's SFTTrainer, configured from the recipe.

The data arrive already tokenized with a per-token loss mask (``completion_mask``), so TRL skips its
own formatting and its collator turns the mask into ``-100`` labels.  :class:`LeanSFTTrainer` drops
the two diagnostics SFTTrainer computes on every step over the full ``[tokens × vocab]`` logits
(entropy and token accuracy): on small models they cost as much as the step itself, and nobody asked
for them.  It keeps a count of tokens seen so throughput can be reported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from finetune.data.packing import PackedCollator, pack_dataset
from finetune.model.load import compute_dtype
from finetune.recipe.schema import Recipe
from finetune.train.checkpoints import AtomicCheckpoints


class LeanSFTTrainer(AtomicCheckpoints, SFTTrainer):
    """SFTTrainer without per-step full-vocabulary metrics, counting tokens, with atomic checkpoints."""

    @property
    def tokens_seen(self) -> int:
        """Real tokens of the training batches so far, over every process."""
        return self._total_train_tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.pop("num_real_tokens", None)  # packed batches carry no attention_mask (finetune.data.packing)
        if self.model.training:
            self._total_train_tokens += count_tokens(self.accelerator, real if real is not None else inputs["attention_mask"])
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        inputs["use_cache"] = False
        return super(SFTTrainer, self).compute_loss(model, inputs, return_outputs, num_items_in_batch)


def count_tokens(accelerator, attention_mask) -> int:
    """Real (non-padding) tokens in this step's micro-batches, summed over every process."""
    tokens = attention_mask.sum().reshape(1)
    if accelerator.num_processes > 1:
        tokens = accelerator.gather(tokens).sum()
    return int(tokens)


def sft_arguments(recipe: Recipe, run_dir: Path, use_cpu: bool) -> SFTConfig:
    """The TRL/transformers arguments for the recipe's ``train:`` and ``eval:`` sections."""
    t = recipe.train
    dtype = compute_dtype(recipe.model)  # the same rule the model was loaded with
    has_eval = bool(recipe.data.validation_sources) or recipe.data.validation_ratio > 0
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        gradient_checkpointing=False,  # enabled on the model before peft wraps it (see adapters)
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if (t.eval_steps and has_eval) else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to=[name for name in t.report_to if name == "wandb"],  # TensorBoard: see reporting_callbacks
        disable_tqdm=True,
        use_cpu=use_cpu,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every trainable (LoRA) weight takes part in each step
        completion_only_loss=True,
        max_length=None,  # rows are already cut to data.max_length, with the policy the recipe chose
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )


def build_sft_trainer(recipe: Recipe, model, tokenizer, data, run_dir: Path, callbacks, use_cpu: bool):
    """An SFT trainer over the prepared data; the model already carries its LoRA adapters."""
    packed = recipe.data.packing
    trainer = LeanSFTTrainer(
        model=model,
        args=sft_arguments(recipe, run_dir, use_cpu),
        train_dataset=pack_dataset(data.train, recipe.data.max_length) if packed else data.train,
        data_collator=PackedCollator(tokenizer.pad_token_id) if packed else None,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its raw dicts
    return trainer
