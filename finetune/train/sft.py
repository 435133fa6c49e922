"""Supervised fine-tuning through TRL's SFTTrainer, configured from the recipe.

The data arrive already tokenized with a per-token loss mask (``completion_mask``), so TRL skips its
own formatting and its collator turns the mask into ``-100`` labels.  :class:`LeanSFTTrainer` drops
the two diagnostics SFTTrainer computes on every step over the full ``[tokens × vocab]`` logits
(entropy and token accuracy): on small models they cost as much as the step itself, and nobody asked
for them.  It never builds those logits at all: the loss comes from the decoder's hidden states at the
trained positions only, a chunk at a time (:mod:`finetune.train.loss`).  It keeps a count of tokens
seen so throughput can be reported.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from finetune.data.packing import PackedCollator, pack_dataset
from finetune.model.load import compute_dtype
from finetune.recipe.schema import Recipe
from finetune.train.batches import SeededLengthGroupedSampler
from finetune.train.checkpoints import AtomicCheckpoints
from finetune.train.loss import causal_lm_loss


class LeanSFTTrainer(AtomicCheckpoints, SFTTrainer):
    """SFTTrainer without full-vocabulary logits or metrics, counting tokens, with atomic checkpoints."""

    def __init__(self, *args, group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.model_accepts_loss_kwargs = True  # compute_loss divides by num_items_in_batch, as the model would

    @property
    def tokens_seen(self) -> int:
        """Real tokens of the training batches so far, over every process."""
        return self._total_train_tokens

    def _get_train_sampler(self, train_dataset=None):
        """Length grouping over the rows of a whole optimiser step (every process's micro-batches), so that
        N processes × micro-batch B draw the same rows per step as one process × N·B would."""
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        step_rows = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(step_rows, [len(ids) for ids in dataset["input_ids"]], self.args.data_seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.pop("num_real_tokens", None)  # packed batches carry no attention_mask (finetune.data.packing)
        if self.model.training:
            self._total_train_tokens += count_tokens(self.accelerator, real if real is not None else inputs["attention_mask"])
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        loss, outputs = self.next_token_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is already global
        return (loss, outputs) if return_outputs else loss

    def next_token_loss(self, model, inputs, num_items_in_batch):
        """The loss over the trained tokens, from hidden states; the head only ever sees one position in full."""
        labels = inputs.pop("labels")
        causal_lm = self.accelerator.unwrap_model(model)
        head = causal_lm.get_output_embeddings()
        if not self.hidden_state_loss_fits(head):
            outputs = model(**inputs, labels=labels, use_cache=False, num_items_in_batch=num_items_in_batch)
            return outputs.loss, outputs
        with final_hidden_states(causal_lm) as hidden:
            outputs = model(**inputs, use_cache=False, logits_to_keep=1)
        loss = causal_lm_loss(hidden[0], head, labels, num_items_in_batch)
        if getattr(outputs, "aux_loss", None) is not None:  # Mixtral's router balance, when output_router_logits
            loss = loss + causal_lm.config.router_aux_loss_coef * outputs.aux_loss.to(loss.device)
        return loss, outputs

    def hidden_state_loss_fits(self, head) -> bool:
        """Whether the chunked loss can use ``head`` directly: the whole of it must be on this process, in one
        replica of the model, as a plain bias-free linear layer.  Otherwise — FSDP or ZeRO-3 (the head is
        sharded after the forward pass), ``nn.DataParallel`` (several replicas), a head with LoRA, a bias or
        a ``modules_to_save`` wrapper — the model computes its own loss from full logits."""
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return (type(head) is torch.nn.Linear and head.bias is None and not self.is_fsdp_enabled and not zero3
                and self.args.n_gpu <= 1)


@contextmanager
def final_hidden_states(causal_lm):
    """Collect the decoder's output (after its final norm) while a forward pass runs through ``causal_lm``."""
    captured = []
    hook = causal_lm.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        yield captured
    finally:
        hook.remove()


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
        prediction_loss_only=True,  # evaluation reports the loss; no logits are gathered
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
        group_by_length=recipe.data.group_by_length and not packed,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its raw dicts
    return trainer
