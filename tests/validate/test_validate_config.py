"""Config rules on bare configs: known 7B / 8x7B shapes must match a release; invariants."""

from __future__ import annotations

import pytest

from finetune.validate.checks_config import (
    ConfigFacts,
    check_gqa,
    check_shape,
    check_version,
    check_vocab,
    check_window_value,
)


def facts(**changes) -> ConfigFacts:
    """Mistral 7B v0.1 as its config.json says, with ``changes``."""
    base = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, hidden_dim=14336,
                vocab_size=32000, rope_theta=1e4, sliding_window=4096, n_experts=0)
    return ConfigFacts(**{**base, **changes})


@pytest.mark.parametrize("changes, version", [
    ({}, "Mistral 7B v0.1"),
    (dict(rope_theta=1e6, sliding_window=None), "Mistral 7B v0.2"),
    (dict(rope_theta=1e6, sliding_window=None, vocab_size=32768), "Mistral 7B v0.3"),
    (dict(rope_theta=1e6, sliding_window=None, n_experts=8), "Mixtral 8x7B v0.1"),
])
def test_releases_pass(changes, version):
    row = check_version(facts(**changes))
    assert row.passed and row.value == version


@pytest.mark.parametrize("changes", [
    dict(rope_theta=1e6),  # v0.1 window with the v0.2 theta
    dict(sliding_window=None),  # v0.2 without its theta
    dict(rope_theta=1e5),  # no release ever
    dict(vocab_size=32768),  # v0.3 vocabulary with the v0.1 window and theta
    dict(n_experts=8),  # Mixtral shape with Mistral v0.1 attention
])
def test_known_shapes_with_foreign_theta_or_window_fail(changes):
    row = check_version(facts(**changes))
    assert not row.passed and "matches no release" in row.detail


def test_unknown_shapes_follow_the_tokenizer():
    tiny = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128)
    assert check_version(facts(**tiny, sliding_window=16)).passed  # v1: window + 1e4, any W
    assert check_version(facts(**tiny, sliding_window=None, rope_theta=1e6)).passed
    assert not check_version(facts(**tiny, sliding_window=None)).passed  # v1, no window, theta 1e4
    assert not check_version(facts(**tiny, vocab_size=32768, sliding_window=None)).passed  # v3 wants 1e6
    other = check_version(facts(**tiny, vocab_size=1000, rope_theta=123.0))
    assert other.passed and other.value == "unknown shape"


def test_invariants():
    assert check_shape(facts()).passed
    assert not check_shape(facts(head_dim=96)).passed
    assert check_gqa(facts()).passed and not check_gqa(facts(n_kv_heads=5)).passed
    assert check_window_value(None).passed and check_window_value(8).passed
    assert not check_window_value(0).passed and not check_window_value(-1).passed
    assert check_vocab(facts(), 32000, 32000, 32000).passed
    row = check_vocab(facts(), 32768, 32000)
    assert not row.passed and "len(tokenizer) 32768" in row.detail
