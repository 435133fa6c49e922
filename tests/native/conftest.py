"""Shared helpers for the native-model tests: tiny transformers models built in memory.

Weights are re-drawn larger than the HF init (std 0.3 instead of 0.02) so that attention is sharp and
position-dependent: a wrong window or head mapping then moves the logits by whole units, far above
the 1e-4 parity tolerance.
"""

from __future__ import annotations

import functools

import pytest
import torch

from finetune.model.tiny import tiny_config

VOCAB = 1000
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, num_layers=2)


@functools.lru_cache(maxsize=None)
def _build(arch: str, window: int | None, attn: str, n_experts: int, seed: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, sliding_window=window, num_experts=n_experts, **SMALL)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def make_hf(arch="mistral", window=8, attn="sdpa", n_experts=4, seed=0):
    """A tiny fp32 ``MistralForCausalLM`` / ``MixtralForCausalLM`` (cached; do not modify it).

    The weights depend on ``seed`` and the shapes only, so eager and sdpa variants share them.
    """
    return _build(arch, window, attn, n_experts, seed)


def tokens(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy 2-core machine a second OpenMP thread
    turns a 40 us matmul into 15 ms of spinning. Restored after each test of this folder."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def hf():
    """Factory ``hf(arch="mistral", window=8, attn="sdpa", n_experts=4, seed=0)``."""
    return make_hf


@pytest.fixture
def toks():
    """Factory ``toks(length, batch=1, seed=0)`` of random token ids ``[batch, length]``."""
    return tokens
