"""Rolling-buffer cache: incremental decoding and chunked prefill reproduce a full re-score."""

import pytest
import torch

from finetune.native import RollingKVCache, apply_rope, from_transformers, rope_cos_sin

W = 8
TOL = 1e-4


def _steps(native, ids, chunk):
    cache = RollingKVCache(native.config, ids.shape[0])
    with torch.no_grad():
        out = torch.cat([native(ids[:, i : i + chunk], cache) for i in range(0, ids.shape[1], chunk)], dim=1)
    return out, cache


@pytest.mark.parametrize("arch,window", [("mistral", W), ("mistral", None), ("mixtral", W)])
def test_token_by_token_equals_full_rescore(hf, toks, arch, window):
    native = from_transformers(hf(arch, window, "sdpa"))
    ids = toks(4 * W, batch=2)
    with torch.no_grad():
        full = native(ids)
    incremental, cache = _steps(native, ids, 1)
    assert (incremental - full).abs().max() <= TOL  # every position, up to 4W
    assert cache.seen == 4 * W


@pytest.mark.parametrize("chunk", [1, 3, W, 2 * W, 5])
def test_chunked_prefill_equals_single_shot(hf, toks, chunk):
    native = from_transformers(hf("mistral", W, "sdpa"))
    ids = toks(4 * W + 3)
    single, _ = _steps(native, ids, ids.shape[1])
    with torch.no_grad():
        assert (single - native(ids)).abs().max() <= TOL  # one cached step == no cache
    chunked, _ = _steps(native, ids, chunk)
    assert (chunked - single).abs().max() <= TOL


def test_cache_is_bounded_by_window(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    _, cache = _steps(native, toks(2 * W + 5), 3)
    assert cache.num_slots == W
    assert all(k.shape[2] == W and v.shape[2] == W for k, v in zip(cache.keys, cache.values))
    pos = cache.positions()
    assert sorted(pos.tolist()) == list(range(W + 5, 2 * W + 5))  # the last W positions
    assert all(p % W == s for s, p in enumerate(pos.tolist()))  # position p at slot p mod W


def test_cache_without_window_grows(hf, toks):
    native = from_transformers(hf("mistral", None, "sdpa"))
    _, cache = _steps(native, toks(3 * W), 5)
    assert cache.num_slots == 3 * W and cache.positions().tolist() == list(range(3 * W))


def test_keys_are_stored_after_rope(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    ids = toks(W + 3)
    _, cache = _steps(native, ids, 1)
    layer0 = native.layers[0]
    with torch.no_grad():
        x = layer0.attention_norm(native.tok_embeddings(ids))
        k = layer0.attention.wk(x).view(1, -1, native.config.n_kv_heads, native.config.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(torch.arange(ids.shape[1]), native.config.head_dim, native.config.rope_theta)
        k = apply_rope(k, cos, sin)
    for slot, p in enumerate(cache.positions().tolist()):
        assert torch.allclose(cache.keys[0][0, :, slot], k[0, :, p], atol=1e-6)


def test_cache_window_must_match_model(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    cache = RollingKVCache(native.config)
    with pytest.raises(ValueError, match="window"):
        native.with_window(W + 1)(toks(4), cache)
