"""Native (pure-PyTorch) Mistral / Mixtral: a readable reference to validate how a model attends.

    from finetune.native import from_transformers, RollingKVCache, generate
    native = from_transformers(hf_model)          # or load_from_folder("path/to/model")
    logits = native(token_ids)                    # [B, T, vocab]
    native.with_window(None)(token_ids)           # same weights, full attention
"""

from .cache import RollingKVCache
from .generate import generate, sample_next, stream
from .load import build_native, from_transformers, load_from_folder, native_state_dict
from .model import (
    NativeConfig,
    Transformer,
    UnsupportedRoPE,
    apply_rope,
    grouped_kv_heads,
    rope_cos_sin,
    sliding_window_mask,
)

__all__ = [
    "NativeConfig",
    "RollingKVCache",
    "Transformer",
    "UnsupportedRoPE",
    "apply_rope",
    "build_native",
    "from_transformers",
    "generate",
    "grouped_kv_heads",
    "load_from_folder",
    "native_state_dict",
    "rope_cos_sin",
    "sample_next",
    "sliding_window_mask",
    "stream",
]
