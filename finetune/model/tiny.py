"""Tiny randomly initialised Mistral / Mixtral models with the real Mistral tokenizers.

The real tokenizers ship inside the ``mistral-common`` package, so a model folder with the exact
vocabulary, special tokens and prompt behaviour of Mistral 7B can be written without any download.
Such a folder is what the quickstart trains and what the tests load: it exercises the same loading,
quantization, adapter and template code as a 7B checkpoint, in seconds on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

TokenizerVersion = Literal["v1", "v3"]

# mistral-common's file names for the SentencePiece models of Mistral 7B v0.1 and v0.3.
_TOKENIZER_FILES = {
    "v1": "tokenizer.model.v1",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
}


def mistral_common_tokenizer_file(version: TokenizerVersion) -> Path:
    """Path of the SentencePiece model that mistral-common ships for ``version``."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / _TOKENIZER_FILES[version]


def save_mistral_tokenizer(version: TokenizerVersion, out_dir: str | Path) -> Path:
    """Write a Hugging Face tokenizer folder for Mistral's ``version`` tokenizer and return its path.

    The folder holds the SentencePiece model plus a ``tokenizer_config.json``; transformers converts it
    to a fast tokenizer on load and we save that conversion too, so later loads are instant.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(mistral_common_tokenizer_file(version), out / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return out


def tiny_config(
    arch: Literal["mistral", "mixtral"] = "mistral",
    *,
    vocab_size: int = 32000,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    sliding_window: int | None = 4096,
    rope_theta: float = 10000.0,
    num_experts: int = 8,
    initializer_range: float = 0.02,
):
    """A ``MistralConfig`` / ``MixtralConfig`` of the real architecture at toy size."""
    from transformers import MistralConfig, MixtralConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        sliding_window=sliding_window,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "mixtral":
        return MixtralConfig(num_local_experts=num_experts, num_experts_per_tok=2, **common)
    return MistralConfig(**common)


def build_tiny_model(
    out_dir: str | Path,
    arch: Literal["mistral", "mixtral"] = "mistral",
    tokenizer: TokenizerVersion = "v1",
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Write a randomly initialised model folder (safetensors + config + tokenizer) and return it.

    The weights depend only on ``seed`` and the config, so the same call gives the same model on
    every machine.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    vocab = 32768 if tokenizer == "v3" else 32000
    if tokenizer == "v3":  # like Mistral 7B v0.3 and Mixtral: no sliding window, rope theta 1e6
        config_overrides.setdefault("sliding_window", None)
        config_overrides.setdefault("rope_theta", 1e6)
    config = tiny_config(arch, vocab_size=vocab, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    save_mistral_tokenizer(tokenizer, out)
    return out
