"""Grouped-query attention: query head h reads KV head h // group; a wrong map is detectable."""

import torch

from finetune.native import from_transformers, grouped_kv_heads


def test_grouped_map():
    assert grouped_kv_heads(4, 2).tolist() == [0, 0, 1, 1]
    assert grouped_kv_heads(32, 8).tolist() == [h // 4 for h in range(32)]  # Mistral 7B
    assert grouped_kv_heads(4, 4).tolist() == [0, 1, 2, 3]


def test_permuted_kv_map_changes_logits(hf, toks):
    hf_model = hf("mistral", 8, "sdpa")
    native = from_transformers(hf_model)
    ids = toks(24)
    with torch.no_grad():
        ref = hf_model(ids).logits
        assert (ref - native(ids)).abs().max() <= 1e-4
        native.set_kv_head_map(lambda n_heads, n_kv: torch.arange(n_heads) % n_kv)  # [0, 1, 0, 1]
        assert (ref - native(ids)).abs().max() > 1e-2


def test_kv_map_as_constructor_argument(hf, toks):
    hf_model = hf("mixtral", None, "sdpa")
    wrong = from_transformers(hf_model, kv_head_map=lambda n_heads, n_kv: torch.arange(n_heads) % n_kv)
    with torch.no_grad():
        assert (hf_model(toks(16)).logits - wrong(toks(16))).abs().max() > 1e-2
