"""How much memory a recipe will need, worked out from the model's config.json before any weight is loaded.

The estimate adds up what training keeps alive at its peak, each term from the model's shape and the
recipe (see :func:`estimate`):

* **runtime** — on CPU, what this process already holds: Python, torch, transformers, peft, TRL,
  the tokenizer and the data (measured, not modelled); on a GPU, nothing (the figure compared is
  ``torch.cuda.max_memory_allocated``, which leaves out the CUDA context);
* **weights** — decoder linear layers at 4-bit NF4 (0.5 byte a weight plus double-quantized block
  scales), 8-bit (1 byte) or the compute dtype; embeddings, output head and norms in the compute dtype;
* **LoRA** — the fp32 adapter weights, their gradients and the optimizer's state (AdamW: two fp32
  moments; 8-bit AdamW: two bytes); ``lora.modules_to_save`` adds, for each vocabulary-sized module
  (``embed_tokens``, ``lm_head``), a full fp32 trained copy with the same and the step's temporaries;
* **activations** — what autograd saves per token per decoder layer, counted from what transformers'
  Mistral layer with LoRA on its linear layers actually saves: the layer input and the normed input
  around each of the two RMSNorms, queries, repeated keys and values and the attention output, four
  MLP tensors of the intermediate width, the LoRA ranks, per-head log-sum-exps.  With gradient
  checkpointing only each layer's input is kept, and one layer's activations are rebuilt at a time.
  On CPU, where the figure is resident memory, the allocator keeps freed blocks, and measured factors
  turn the count into RSS (:data:`CPU_RETAINED`);
* **attention** — the boolean ``[length × length]`` mask SDPA gets (and, with ``eager``, the
  attention probabilities of every layer);
* **loss** — the chunked loss's logits buffer and the hidden states of trained positions; for DPO,
  TRL's full ``[tokens × vocab]`` logits of the chosen and rejected answers (log-softmax and gradient
  included), with both answers in each micro-batch;

Loading can peak above training when the checkpoint is read whole before it is quantized, so the
peak is the larger of the two phases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.recipe.schema import Recipe

MIB = 2**20
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weight, 8-bit scale per 64 weights, fp32 per 256 scales
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_8bit": 2, "adamw_8bit": 2, "sgd": 0}
# On CPU the figure is resident memory, and glibc's allocator keeps most blocks freed during a forward
# pass for reuse instead of returning them, so RSS tracks more than the live tensors.  Measured on the
# tiny Mistral of bench/train_throughput.py (torch 2.13, glibc 2.36; tests/train/test_memory.py):
# resident growth over a training step = the activation count below × 1.6 without gradient
# checkpointing (saved tensors plus the last layer's transients), × 1.0 with it (the recomputed layers'
# freed transients stay resident), plus ~90 MiB of kernel workspace on the first pass.
CPU_RETAINED = {False: 1.6, True: 1.0}
CPU_WORKSPACE = 90 * MIB
# Bytes per parameter of a vocabulary-sized module in lora.modules_to_save beyond its weights, gradient
# and optimizer state: step temporaries (the loss's fp32 gradient buffer, AdamW's intermediates), which
# on CPU glibc keeps once freed. CPU: measured, embed_tokens + lm_head of the 4-layer tiny Mistral, 4-bit,
# 4 × 256 tokens: +608 MiB of RSS for 16.4M parameters, 39 B each, 16 of them weights/gradient/AdamW
# (tests/train/test_memory.py). GPU: one fp32 temporary, not measured.
SAVED_MODULE_TRANSIENTS = {"cpu": 24, "cuda": 4}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """The numbers of a Mistral-family config that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    sliding_window: int | None
    experts: int = 1  # Mixtral: experts per layer, of which `active_experts` run per token
    active_experts: int = 1

    @classmethod
    def from_config(cls, config: dict) -> "Shape":
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"], hidden=config["hidden_size"],
            intermediate=config["intermediate_size"], heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)), sliding_window=config.get("sliding_window"),
            experts=config.get("num_local_experts", 1), active_experts=config.get("num_experts_per_tok", 1),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer (one expert's for the MLP)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    def decoder_linear_params(self) -> int:
        shapes = self.linear_shapes()
        attention = sum(i * o for name, (i, o) in shapes.items() if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
        mlp = sum(i * o for name, (i, o) in shapes.items() if name in ("gate_proj", "up_proj", "down_proj"))
        return self.layers * (attention + self.experts * mlp)


@dataclass
class Estimate:
    """Peak memory, term by term, in bytes."""

    device: str
    terms: dict[str, float]
    loading_peak: float

    @property
    def training_peak(self) -> float:
        return sum(self.terms.values())

    @property
    def peak(self) -> float:
        return max(self.training_peak, self.loading_peak)

    def table(self) -> str:
        """The breakdown, one term a line, in MiB."""
        width = max(len(name) for name in self.terms)
        lines = [f"{name:<{width}}  {value / MIB:>10,.0f} MiB" for name, value in self.terms.items()]
        lines.append(f"{'training peak':<{width}}  {self.training_peak / MIB:>10,.0f} MiB")
        lines.append(f"{'loading peak':<{width}}  {self.loading_peak / MIB:>10,.0f} MiB")
        what = "resident memory (RSS)" if self.device == "cpu" else "GPU memory allocated"
        lines.append(f"{'estimated peak':<{width}}  {self.peak / MIB:>10,.0f} MiB  ({what})")
        return "\n".join(lines)


def estimate_command(recipe: Recipe) -> str:
    """``mistral-ft estimate``: the breakdown table, with this process holding what a training process holds
    before its model loads (the training libraries and the tokenizer), so the runtime term is measured."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from trl import SFTTrainer  # noqa: F401

    from finetune.model.load import load_tokenizer

    load_tokenizer(recipe.model)
    guess = for_recipe(recipe)
    rows = recipe.train.micro_batch_size * (2 if recipe.train.method == "dpo" else 1)
    head = (f"{recipe.model.base}: {recipe.train.method}, {recipe.model.quantization}, {rows} × "
            f"{recipe.data.max_length} tokens per micro-batch, gradient checkpointing "
            f"{'on' if recipe.train.gradient_checkpointing else 'off'}, on {guess.device}")
    return head + "\n" + guess.table()


def for_recipe(recipe: Recipe, longest_row: int | None = None) -> Estimate:
    """The estimate for this machine: CUDA when there is a GPU, else the CPU with this process's memory
    as the runtime.  ``longest_row``: the longest prepared row, when the data are known (else max_length)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = read_model_config(recipe.model.base, recipe.model.revision)
    return estimate(recipe, config, device, current_rss() if device == "cpu" else 0.0,
                    checkpoint_size(recipe.model.base), longest_row)


def shortfall(guess: Estimate, processes_here: int = 1) -> str | None:
    """A warning when the estimated peak is more than the device has free, else None.  On CPU the
    ``processes_here`` processes of this machine share its memory; a GPU is each process's own."""
    if guess.device == "cuda":
        import torch

        free, need = float(torch.cuda.mem_get_info()[0]), guess.peak
    else:  # what this process holds plus what is still free, against every local process's peak
        free, need = available_memory() + guess.terms["runtime (measured)"], guess.peak * processes_here
    if need <= free:
        return None
    return (f"this recipe is estimated to need {need / MIB:,.0f} MiB at its peak, but the "
            f"{'GPU' if guess.device == 'cuda' else 'machine'} has {free / MIB:,.0f} MiB free. Lower "
            "train.micro_batch_size or data.max_length, turn on train.gradient_checkpointing, or use "
            "model.quantization: 4bit; `mistral-ft estimate RECIPE` shows where the memory goes.")


def estimate(recipe: Recipe, config: dict, device: str, runtime_bytes: float, checkpoint_bytes: float,
             longest_row: int | None = None) -> Estimate:
    """Peak memory of training ``recipe`` on a model with this ``config.json`` (see the module docstring)."""
    shape = Shape.from_config(config)
    act = DTYPE_BYTES[_compute(recipe, device)]
    tokens_per_row = recipe.data.max_length if recipe.data.packing or not longest_row else longest_row
    dpo = recipe.train.method == "dpo"
    rows = recipe.train.micro_batch_size * (2 if dpo else 1)  # DPO runs chosen and rejected together
    tokens = rows * tokens_per_row

    weights = _weights(shape, recipe.model.quantization, act)
    lora_params = _lora_params(shape, recipe.lora.r, recipe.lora.target_modules, recipe.lora.exclude_modules)
    per_layer = _layer_activations_per_token(shape, recipe.lora.r, lora_params > 0) * act
    per_layer += _lora_input_copies_per_token(shape, act, recipe.lora.dropout) if lora_params else 0
    checkpointing = recipe.train.gradient_checkpointing
    if device == "cpu":  # resident memory: glibc keeps the blocks freed between layers (see CPU_RETAINED)
        activations = tokens * shape.layers * per_layer * CPU_RETAINED[checkpointing] + CPU_WORKSPACE
    elif checkpointing:  # each layer's input, and one layer rebuilt at a time in backward
        activations = tokens * (shape.layers * shape.hidden * act + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    activations += tokens * (2 * shape.hidden + 1) * act + tokens * 8  # final norm; token ids (int64)
    if recipe.model.attn_implementation == "eager":
        attention = rows * shape.heads * tokens_per_row**2 * act * 2 * shape.layers
    else:
        attention = rows * tokens_per_row**2  # one boolean mask, shared by the layers
    if dpo:
        loss = 3 * tokens * shape.vocab * 4  # fp32 logits, log-softmax, their gradient
    else:
        from finetune.train.loss import CHUNK_ROWS

        loss = min(CHUNK_ROWS, tokens) * shape.vocab * 4 + 2 * tokens * shape.hidden * act
    optimizer_bytes = OPTIMIZER_STATE_BYTES[recipe.train.optimizer]
    terms = {
        "runtime (measured)" if device == "cpu" else "runtime": runtime_bytes,
        "weights": weights,
        "LoRA weights, gradients, optimizer": lora_params * (4 + 4 + optimizer_bytes),
        **_saved_modules(shape, recipe.lora.modules_to_save, optimizer_bytes, device),
        "activations": activations,
        "attention mask / scores": attention,
        "loss": loss,
    }
    loading = runtime_bytes + weights + (checkpoint_bytes if device == "cpu" else 0)
    return Estimate(device=device, terms=terms, loading_peak=loading)


def _compute(recipe: Recipe, device: str) -> str:
    dtype = recipe.model.compute_dtype
    return dtype if dtype != "auto" else ("bf16" if device == "cuda" else "fp32")


def _weights(shape: Shape, quantization: str, act: int) -> float:
    per_weight = {"4bit": NF4_BYTES, "8bit": 1.0, "none": act}[quantization]
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    norms = (2 * shape.layers + 1) * shape.hidden
    router = shape.layers * shape.hidden * shape.experts if shape.experts > 1 else 0
    rest = 4 if quantization != "none" else act  # peft's k-bit preparation casts what is not quantized to fp32
    return shape.decoder_linear_params() * per_weight + (embeddings + norms + router) * rest


def _saved_modules(shape: Shape, names: list[str], optimizer_bytes: int, device: str) -> dict[str, float]:
    """``lora.modules_to_save``: peft trains a full fp32 copy of each (weights, gradient, optimizer state,
    and the temporaries of each step: the chunked loss's fp32 gradient buffer, the optimizer's per-tensor
    intermediates; see :data:`SAVED_MODULE_TRANSIENTS`). Only the vocabulary-sized ones weigh anything
    (``embed_tokens``, ``lm_head``: vocab × hidden each)."""
    copies = sum(name.split(".")[-1] in ("embed_tokens", "lm_head") for name in names)
    per_param = 4 + 4 + optimizer_bytes + SAVED_MODULE_TRANSIENTS[device]
    total = copies * shape.vocab * shape.hidden * per_param
    return {"modules_to_save: weights, gradients, optimizer": total} if total else {}


def _lora_params(shape: Shape, r: int, targets, excluded) -> int:
    names = LORA_TARGETS if targets == "all-linear" else [t for t in LORA_TARGETS if t in targets]
    names = [n for n in names if n not in set(excluded)]
    per_layer = 0
    for name in names:
        fan_in, fan_out = shape.linear_shapes()[name]
        copies = shape.experts if name in ("gate_proj", "up_proj", "down_proj") else 1
        per_layer += copies * r * (fan_in + fan_out)
    return shape.layers * per_layer


def _layer_activations_per_token(shape: Shape, r: int, lora: bool) -> float:
    """Numbers autograd keeps per token for one decoder layer (see the module docstring)."""
    attention_width = shape.heads * shape.head_dim
    norms = 2 * (2 * shape.hidden + 1)  # each RMSNorm: its input, its normed output, one rsqrt
    attention = 4 * attention_width + shape.heads  # q, repeated k and v, output; log-sum-exp per head
    attention += attention_width  # the output, made contiguous for o_proj
    mlp = 4 * shape.intermediate * shape.active_experts  # gate, up, silu(gate), silu(gate)·up
    return norms + attention + mlp + (7 * r if lora else 0)


def _lora_input_copies_per_token(shape: Shape, act: int, dropout: float) -> float:
    """Bytes per token per layer that the adapters add: peft casts each adapted layer's input to the fp32
    adapter dtype (a copy when the compute dtype is 16-bit), and LoRA dropout keeps its fp32 output and a
    one-byte mask per input."""
    inputs = 5 * shape.hidden + shape.heads * shape.head_dim + shape.intermediate * shape.active_experts
    if dropout > 0:
        return inputs * (4 + 1)
    return inputs * 4 if act != 4 else 0


def read_model_config(base: str, revision: str | None = None) -> dict:
    """config.json of a local folder, or from the Hub (the small file only)."""
    from finetune.model.load import friendly_hub_errors, local_or_hub

    with friendly_hub_errors(base, "model"):
        path = Path(local_or_hub(base))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FinetuneError(f"model.base {base!r} has no config.json.",
                                    hint="Point model.base at a Hugging Face model folder (config.json + weights).")
            return json.loads((path / "config.json").read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(base, "config.json", revision=revision)).read_text())


def checkpoint_size(base: str) -> float:
    """Bytes of a local folder's weight files (0 for a Hub id: it is read shard by shard)."""
    path = Path(base).expanduser()
    if not path.is_dir():
        return 0.0
    return float(sum(f.stat().st_size for f in path.glob("*.safetensors")))


def available_memory() -> float:
    """MemAvailable from /proc/meminfo, in bytes (Linux)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float("inf")


def current_rss() -> float:
    """This process's resident memory now, in bytes (Linux)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
