"""The recipe schema: every key a recipe may hold, its type, default and meaning.

A recipe is one YAML file with sections ``model``, ``lora``, ``data``, ``train``, ``dpo`` (read
only by ``train.method: dpo``), ``eval`` and ``output``.  Every model forbids unknown keys, so a typo
is an error with a suggestion rather than a silently ignored setting (axolotl drops unknown keys; we
refuse them).  Field descriptions are the documentation: ``mistral-ft recipe schema`` prints them.

Nothing here imports torch: a recipe can be checked without loading any model code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ModelConfig(Section):
    """The base model and how it is loaded."""

    base: str = Field(
        description="Base model: a local folder (config.json + weights) or a Hugging Face Hub id "
        "such as mistralai/Mistral-7B-v0.1. Relative paths are resolved from the current directory."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base model.")
    tokenizer: str | None = Field(
        None, description="Tokenizer folder or Hub id when it differs from the base model's own."
    )
    quantization: Literal["4bit", "8bit", "none"] = Field(
        "4bit",
        description="Weight storage of the frozen base: 4bit = NF4 with double quantization "
        "(QLoRA, bitsandbytes), 8bit = LLM.int8 (bitsandbytes), none = the compute dtype.",
    )
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Dtype of the matmuls and of unquantized weights. auto = bf16 on a GPU, fp32 on CPU."
    )
    attn_implementation: Literal["sdpa_windowed", "sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa_windowed",
        description="Attention backend: sdpa_windowed = PyTorch SDPA that skips the keys outside the sliding window "
        "(the sdpa result, with less work on rows longer than the window); sdpa / eager / flash_attention_2 = "
        "transformers' own.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model repository. Off unless you trust it."
    )
    adapter: str | None = Field(
        None,
        description="Start from a trained LoRA adapter instead of a fresh one: a run folder (its adapter/ is "
        "used) or a peft adapter folder (adapter_config.json + weights) trained on this base. The lora: "
        "section is then not used; the adapter's own rank and targets are. sft continues training it; dpo "
        "trains it as the policy and keeps a frozen copy of it as the reference.",
    )


class LoraConfig(Section):
    """The LoRA adapter attached to the frozen base (peft)."""

    r: int = Field(
        16, gt=0, validation_alias=AliasChoices("r", "rank"), description="LoRA rank (alias: rank)."
    )
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: all-linear (every linear layer except the output head; "
        "MoE routers excluded) or a list of module names such as [q_proj, v_proj].",
    )
    exclude_modules: list[str] = Field(
        default_factory=list, description="Module names never adapted, even when target_modules matches them."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. [lm_head, embed_tokens]).",
    )


FormatName = Literal["instruct-v3", "alpaca", "messages", "prompt-completion", "text", "preference"]


class SourceConfig(Section):
    """One data source: a Hub data set or local files, in one of the supported formats."""

    path: str = Field(
        description="A local .jsonl/.json/.csv/.parquet file, a folder of such files, or a Hub data set id."
    )
    format: FormatName = Field(description="How rows are read; see the formats table in the README.")
    split: str = Field(
        "train", description="Split to read: Hub data sets, and folders holding <split>.* files; "
        "ignored for a single local file."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping {format column: column in your data}, e.g. {response: answer}. Keys must "
        "be the format's own column names (a typo is an error); `source` can be mapped too.",
    )
    source_filter: list[str] | None = Field(
        None,
        validation_alias=AliasChoices("source_filter", "sources"),
        description="Keep only rows whose `source` column is one of these (instruct-v3 has that column; "
        "other formats need one, else it is an error).",
    )
    max_rows: int | None = Field(
        None, gt=0, description="Use the first N rows in file order (after filtering); reading stops there."
    )
    system_prompt: str | None = Field(None, description="System prompt for every conversation from this source.")


class DataConfig(Section):
    """Where the rows come from, how they are rendered and masked, and the held-out split."""

    sources: list[SourceConfig] = Field(min_length=1, description="Training sources, mixed and shuffled together.")
    validation_sources: list[SourceConfig] = Field(
        default_factory=list, description="Held-out sources. When empty, validation_ratio of the rows are held out."
    )
    validation_ratio: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Fraction of training rows held out when no validation_sources are given, taken after "
        "mixing and shuffling with data.seed (at least one row when there are two or more).",
    )
    template: Literal["auto", "mistral", "chat_template"] = Field(
        "auto",
        description="Prompt rendering: mistral = built-in [INST] format (token-exact with mistral-common), "
        "chat_template = the tokenizer's own template, auto = the tokenizer's if it has one, else mistral.",
    )
    train_on: Literal["responses", "all"] = Field(
        "responses", description="Which tokens carry loss: the assistant responses (+ EOS) only, or every token."
    )
    max_length: int = Field(2048, gt=8, description="Maximum tokens per row, BOS and EOS included.")
    overlong: Literal["truncate", "drop", "error"] = Field(
        "error", description="What to do with a row longer than max_length; counted and reported in every case."
    )
    packing: bool = Field(
        False,
        description="SFT: pack whole rows into sequences of max_length tokens (best-fit decreasing); positions "
        "restart per row and attention never crosses a row, so each row trains as if alone, with less padding.",
    )
    group_by_length: bool = Field(
        True,
        description="SFT without packing: put rows of similar length in the same micro-batch (rows shuffled, sorted "
        "by length within groups of up to 50 steps, steps run in shuffled order), so little of a batch is padding. "
        "false = plain shuffle.",
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="A row that cannot be used (not valid JSON, a missing / null / empty / non-string field, roles "
        "out of order): error = stop with a list of every bad row; skip = train without them and write each, "
        "with its reason, to rejected.jsonl in the run folder.",
    )
    seed: int = Field(0, description="Seed of the shuffle and of the held-out split.")


class TrainConfig(Section):
    """Optimisation: the hyper-parameters handed to the trainer."""

    method: Literal["sft", "dpo"] = Field(
        "sft",
        description="Training method: sft = supervised fine-tuning on responses; dpo = direct preference "
        "optimisation on preference pairs (sources in the preference format; settings in dpo:).",
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps; -1 = run the epochs.")
    micro_batch_size: int = Field(4, gt=0, description="Rows per forward pass per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimiser step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit", "sgd"] = Field(
        "adamw_torch", description="Optimiser (transformers name)."
    )
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, description="Seed of weights init (LoRA), dropout and data order.")
    logging_steps: int = Field(5, gt=0, description="Log loss and learning rate every N steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate held-out loss every N steps (None = at the end).")
    save_steps: int | None = Field(None, gt=0, description="Write a checkpoint every N steps (None = no checkpoints).")
    save_total_limit: int | None = Field(2, gt=0, description="Keep only the last K checkpoints.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Also log to TensorBoard (<run>/tensorboard; pip install tensorboard) and/or Weights & Biases "
        "(pip install wandb; WANDB_* environment variables apply).",
    )


class DpoConfig(Section):
    """Direct preference optimisation (train.method: dpo) through TRL's DPOTrainer."""

    beta: float = Field(
        0.1, gt=0, description="How far the policy may move from the reference: higher keeps it closer."
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description="TRL's loss: sigmoid = the DPO paper's, ipo = IPO (squared loss on log-probs averaged per "
        "token), hinge = SLiC's hinge on the reward margin.",
    )
    max_prompt_length: int | None = Field(
        None, gt=0,
        description="Most prompt tokens per pair (BOS and [INST] markers included); None = only data.max_length "
        "limits it. Longer prompts follow data.overlong (truncate keeps BOS and the end of the prompt).",
    )
    max_completion_length: int | None = Field(
        None, gt=0,
        description="Most tokens per chosen or rejected answer (EOS included); None = only data.max_length "
        "limits it. data.max_length bounds prompt + answer for each side of the pair.",
    )


class EvalConfig(Section):
    """Held-out evaluation before and after training."""

    loss: bool = Field(True, description="Report held-out loss before and after training.")
    generate: bool = Field(
        False,
        description="Greedy-generate answers to held-out prompts and score exact match against the reference "
        "responses, before and after training (for data sets with reference answers).",
    )
    max_new_tokens: int = Field(64, gt=0, description="Generation budget per held-out prompt.")
    max_samples: int | None = Field(200, gt=0, description="Score at most this many held-out prompts.")
    batch_size: int = Field(16, gt=0, description="Prompts generated together.")


class OutputConfig(Section):
    """Where the run folder goes."""

    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str | None = Field(
        None, description="Run name; defaults to the recipe file name. A timestamp keeps runs from colliding."
    )


class Recipe(Section):
    """A whole fine-tuning recipe."""

    model: ModelConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _eval_needs_held_out_rows(self) -> "Recipe":
        held_out = self.data.validation_sources or self.data.validation_ratio > 0
        if (self.eval.generate or self.train.eval_steps) and not held_out:
            raise ValueError(
                "eval.generate and train.eval_steps need held-out rows: set data.validation_ratio > 0 "
                "or list data.validation_sources"
            )
        return self

    @model_validator(mode="after")
    def _formats_match_method(self) -> "Recipe":
        sources = [*self.data.sources, *self.data.validation_sources]
        preference = [s.path for s in sources if s.format == "preference"]
        if self.train.method == "dpo" and len(preference) < len(sources):
            other = ", ".join(f"{s.path} ({s.format})" for s in sources if s.format != "preference")
            raise ValueError(
                f"train.method dpo trains on preference pairs, so every data source needs `format: preference`; "
                f"these do not: {other}"
            )
        if self.train.method == "sft" and preference:
            raise ValueError(
                f"sources in the preference format ({', '.join(preference)}) need `train.method: dpo`; sft "
                "trains on one answer per prompt"
            )
        if self.train.method == "dpo" and self.eval.generate:
            raise ValueError("eval.generate (exact match) is for sft; dpo reports held-out preference accuracy")
        return self
