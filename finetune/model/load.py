"""Load the tokenizer and the frozen base model the way the recipe's ``model:`` section says.

Quantization is delegated to bitsandbytes through transformers' ``BitsAndBytesConfig``: 4-bit is
NF4 with double quantization (the QLoRA recipe), 8-bit is LLM.int8.  The compute dtype defaults to
bf16 on a GPU and fp32 on a CPU, where bf16 matmuls are slow.  A base that is neither a local folder
nor reachable on the Hub gives one readable error instead of a stack of HTTP retries.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from finetune.errors import FinetuneError
from finetune.recipe.schema import ModelConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(cfg: ModelConfig) -> torch.dtype:
    """The recipe's compute dtype; ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    if cfg.compute_dtype != "auto":
        return _DTYPES[cfg.compute_dtype]
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def quantization_config(cfg: ModelConfig):
    """The ``BitsAndBytesConfig`` for the recipe's quantization, or None for 16/32-bit weights."""
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(cfg),
            bnb_4bit_quant_storage=compute_dtype(cfg),  # lets FSDP shard the packed weights
        )
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of the base (or ``model.tokenizer``), with a pad token for batching.

    Mistral ships no pad token; we pad with EOS.  That is safe because labels come from the
    per-token loss mask, not from ``input_ids != pad``, so the real EOS is still trained.
    """
    from transformers import AutoTokenizer

    source = cfg.tokenizer or cfg.base
    with friendly_hub_errors(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            local_or_hub(source), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(cfg: ModelConfig, device_map=None):
    """The frozen base model, quantized as the recipe asks, in eval-free training-ready state."""
    from transformers import AutoModelForCausalLM

    from finetune.model.windowed_attention import attention_backend

    with friendly_hub_errors(cfg.base, "model"):
        model = AutoModelForCausalLM.from_pretrained(
            local_or_hub(cfg.base),
            revision=cfg.revision,
            dtype=compute_dtype(cfg),
            quantization_config=quantization_config(cfg),
            attn_implementation=attention_backend(cfg.attn_implementation),
            trust_remote_code=cfg.trust_remote_code,
            device_map=device_map if device_map is not None else _default_device_map(cfg),
        )
    model.config.use_cache = False  # the cache is useless in training and wastes memory
    return model


def _default_device_map(cfg: ModelConfig):
    """Quantized weights must be placed at load time: on this process's GPU, or the CPU."""
    if cfg.quantization == "none":
        return None
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def local_or_hub(name: str) -> str:
    """A local folder's path, or the Hub id unchanged. A path that looks local but is missing is an error."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an `org/name` Hub id
        raise FinetuneError(
            f"model.base {name!r}: no such folder.",
            hint="Point model.base at a folder with config.json and weights, or use a Hub id such as "
            "mistralai/Mistral-7B-v0.1. The quickstart's tiny model is made by `mistral-ft tiny-model`.",
        )
    return name


class friendly_hub_errors:
    """Turn the Hub client's errors for a missing or unreachable repository into one FinetuneError."""

    def __init__(self, name: str, what: str):
        self.name, self.what = name, what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, FinetuneError):
            return False
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        if isinstance(exc, GatedRepoError):
            raise FinetuneError(
                f"The {self.what} {self.name!r} is gated on the Hugging Face Hub.",
                hint="Accept its licence on the model page and log in (`hf auth login` or HF_TOKEN).",
            ) from None
        if isinstance(exc, (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError)):
            if isinstance(exc, RepositoryNotFoundError):
                reason = "does not exist on the Hugging Face Hub (or is private)"
            else:
                reason = "is not a local folder and could not be fetched from the Hugging Face Hub"
                reason += " (HF_HUB_OFFLINE is set)" if offline else " (no network, or not in the local cache)"
            raise FinetuneError(
                f"The {self.what} {self.name!r} {reason}.",
                hint="Download it once where there is network (`hf download "
                f"{self.name}`) so it is in the Hugging Face cache, or point model.base at a local "
                "folder; set HF_HUB_OFFLINE=1 to use the cache without network.",
            ) from None
        return False
