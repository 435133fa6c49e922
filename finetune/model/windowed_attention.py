"""SDPA that does not compute what the sliding window throws away: ``attn_implementation: sdpa_windowed``.

transformers' ``sdpa`` backend hands PyTorch's ``scaled_dot_product_attention`` the whole
``[length × length]`` mask whenever there is one (padding, packed rows, or any row longer than the
sliding window).  With an explicit mask the kernel scores every query against every key: a 1024-token
row under a 256-token window pays for 1024² scores of which about 1024 × 256 survive the mask, and a
32k-token row under Mistral 7B v0.1's 4096-token window for 32k² of which 32k × 4096 survive.

This backend cuts the queries into blocks of :data:`QUERY_BLOCK` and gives each block only the keys
its window can reach, ``[block start − window + 1, block end)``, with the matching slice of the same
mask transformers built.  Every score it drops is one the mask would have zeroed, so the output is
the ``sdpa`` output (to float rounding); forward and backward both do ~``length × (window + block)``
work instead of ``length²``.  Anything else — no window, no mask, a short sequence, decoding with a
KV cache — goes to transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_windowed"
# Queries per block: smaller blocks skip more keys but make more kernel calls. bench/block_sizes.py on
# the 2-core CPU (4 × 1024 tokens, window 256, fwd + bwd): 1.32× sdpa at 128, 1.66× at 256, 1.39× at 512.
QUERY_BLOCK = 256


def windowed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          sliding_window: int | None = None, **kwargs):
    """transformers' attention-function signature: ``query`` [batch, heads, q_len, dim] → [batch, q_len, heads, dim]."""
    length = query.shape[2]
    if (sliding_window is None or attention_mask is None or key.shape[2] != length
            or attention_mask.shape[-1] != length or length <= sliding_window + QUERY_BLOCK):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # once: each block takes views of these
    blocks = []
    for start in range(0, length, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, length)
        first_key = max(0, start - sliding_window + 1)  # the earliest key any query of the block may see
        blocks.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, first_key:end], value[:, :, first_key:end],
            attn_mask=attention_mask[:, :, start:end, first_key:end], dropout_p=dropout, scale=scaling,
        ))
    return torch.cat(blocks, dim=2).transpose(1, 2).contiguous(), None


def attention_backend(name: str) -> str:
    """The ``attn_implementation`` to load with; ``sdpa_windowed`` is registered with transformers first."""
    if name == NAME:
        AttentionInterface.register(NAME, windowed_sdpa_forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the very masks sdpa gets, sliced per block above
    return name
