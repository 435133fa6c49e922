"""Deliberately broken models are flagged, by the rows that should catch them, with a diagnosis.

* window ignored: the live transformers config loses its window after the native reference was
  built from the checkpoint (the sdpa-ignores-the-window bug class);
* window off by one: an attention backend that lets each query see W + 1 keys (the old flash rule);
* wrong KV-head mapping: a native reference with a swapped map, and a backend that tiles KV heads
  (``h % kv``) instead of grouping them (``h // (heads / kv)``);
* rope theta wrong for the version: caught by the config row alone (both models read the same theta).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from validate_helpers import W, by_name, edit_config, failing

from finetune.native import sliding_window_mask
from finetune.validate import resolve_target, run_checks


def _positions(query: torch.Tensor) -> torch.Tensor:
    return torch.arange(query.shape[2], device=query.device)


def _sdpa(query, key, value, mask, scaling):
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def off_by_one_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Sliding window with W + 1 keys per query (i - W <= j <= i), GQA done right."""
    groups = query.shape[1] // key.shape[1]
    pos = _positions(query)
    mask = sliding_window_mask(pos, pos, module.config.sliding_window + 1)
    return _sdpa(query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), mask, scaling)


def tiled_kv_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """The right window, but query head h reads KV head h % kv (tiled instead of grouped)."""
    groups = query.shape[1] // key.shape[1]
    pos = _positions(query)
    mask = sliding_window_mask(pos, pos, module.config.sliding_window)
    return _sdpa(query, key.repeat(1, groups, 1, 1), value.repeat(1, groups, 1, 1), mask, scaling)


AttentionInterface.register("test_off_by_one", off_by_one_attention)
AttentionInterface.register("test_tiled_kv", tiled_kv_attention)


def test_window_ignored_by_the_attention_path(tiny_mistral):
    subject = resolve_target(tiny_mistral)
    subject.model.config.sliding_window = None  # the checkpoint declares W=8, forward runs without it
    rows = by_name(run_checks(subject))
    for backend in ("eager", "sdpa"):
        window = rows[f"attention.window[{backend}]"]
        assert not window.passed and "the window is ignored" in window.detail
        assert window.value == f"{W + 1}..{2 * W + 5}"  # every earlier key: no window at all
        assert not rows[f"window.sensitivity[{backend}]"].passed
        assert "silently ignored" in rows[f"window.sensitivity[{backend}]"].detail
        parity = rows[f"parity[{backend}]"]
        assert not parity.passed and "no window (window ignored)" in parity.detail
    assert all(r.passed for n, r in rows.items() if n.startswith(("config.", "template.")))


def test_window_off_by_one(tiny_mistral):
    rows = run_checks(tiny_mistral, backends=["test_off_by_one"])
    named = by_name(rows)
    window = named["attention.window[test_off_by_one]"]
    assert not window.passed and window.value == str(W + 1)
    last = 2 * W + 4  # the probe runs 2W + 5 tokens
    assert f"query {last} sees keys {last - W}..{last} ({W + 1}), expected {last - W + 1}..{last} ({W})" in window.detail
    assert "off by one" in window.detail
    parity = named["parity[test_off_by_one]"]
    assert not parity.passed and f"window W+1={W + 1}" in parity.detail
    assert named["window.sensitivity[test_off_by_one]"].passed  # a window is applied, just the wrong one


def test_native_reference_with_swapped_kv_map(tiny_mistral):
    subject = resolve_target(tiny_mistral)
    subject.native.set_kv_head_map(lambda heads, kv: (torch.arange(heads) // (heads // kv)).flip(0))
    rows = by_name(run_checks(subject, backends=["sdpa"]))
    parity = rows["parity[sdpa]"]
    assert not parity.passed and parity.value > 1e-2
    assert "grouped KV-head map" in parity.detail
    assert rows["attention.window[sdpa]"].passed  # the mask itself is fine


def test_attention_path_with_tiled_kv_heads(tiny_mistral):
    rows = by_name(run_checks(tiny_mistral, backends=["test_tiled_kv"]))
    parity = rows["parity[test_tiled_kv]"]
    assert not parity.passed and "interleaved KV-head map" in parity.detail
    assert rows["attention.window[test_tiled_kv]"].passed


@pytest.mark.parametrize("theta", [1e4, 5e5])
def test_rope_theta_wrong_for_the_version(tiny_mixtral, tmp_path, theta):
    """vocab 32768 = v3 tokenizer = theta 1e6: any other theta is a config no release had."""
    folder = edit_config(tiny_mixtral, tmp_path / "bad-theta", rope_theta=theta)
    rows = run_checks(folder, backends=["sdpa"], max_length=32)
    assert failing(rows) == ["config.version"]  # the model and the reference agree: only the config tells
    assert "v3 tokenizer" in by_name(rows)["config.version"].detail


def test_window_on_a_v3_vocabulary(tiny_mixtral, tmp_path):
    folder = edit_config(tiny_mixtral, tmp_path / "v3-window", sliding_window=W)
    assert failing(run_checks(folder, backends=["sdpa"], max_length=32)) == ["config.version"]


def test_broken_target_keeps_the_failures_first(tiny_mistral):
    from finetune.validate.report import ordered

    subject = resolve_target(tiny_mistral)
    subject.model.config.sliding_window = None
    rows = ordered(run_checks(subject, backends=["sdpa"]))
    passed = [r.passed for r in rows]
    assert passed == sorted(passed)  # every False before every True
