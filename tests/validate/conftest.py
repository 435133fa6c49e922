"""Tiny model folders with the real Mistral tokenizers, built once per session, and helpers.

Windows are small (W = 8) so that sequences of 3W stay tiny; weights are the HF init of
``build_tiny_model``, exactly what ``mistral-ft tiny-model`` writes, so the checks are exercised
on the models users smoke-test with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from validate_helpers import W

SMALL = dict(hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, num_layers=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads on a shared 2-core machine; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate-models")


def _build(root: Path, name: str, **kwargs) -> Path:
    from finetune.model.tiny import build_tiny_model

    return build_tiny_model(root / name, seed=0, **SMALL, **kwargs)


@pytest.fixture(scope="session")
def tiny_mistral(models_root) -> Path:
    """Mistral 7B v0.1 rules at toy size: v1 tokenizer, W = 8, theta 1e4."""
    return _build(models_root, "mistral-v1", arch="mistral", tokenizer="v1", sliding_window=W, rope_theta=1e4)


@pytest.fixture(scope="session")
def tiny_mixtral(models_root) -> Path:
    """Mixtral rules at toy size: v3 tokenizer (vocab 32768), no window, theta 1e6, 4 experts top-2."""
    return _build(models_root, "mixtral-v3", arch="mixtral", tokenizer="v3", sliding_window=None,
                  rope_theta=1e6, num_experts=4)


@pytest.fixture(scope="session")
def tiny_mixtral_window(models_root) -> Path:
    """A Mixtral with a sliding window (v1 tokenizer, theta 1e4): the window through the MoE path."""
    return _build(models_root, "mixtral-v1-window", arch="mixtral", tokenizer="v1", sliding_window=W,
                  rope_theta=1e4, num_experts=4)
