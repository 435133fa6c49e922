"""Logits parity: native model vs transformers (eager and sdpa), windowed, full, dense and MoE."""

import pytest
import torch

from finetune.native import from_transformers

TOL = 1e-4


def _parity(hf_model, ids):
    native = from_transformers(hf_model)
    with torch.no_grad():
        ref, ours = hf_model(ids).logits, native(ids)
    return (ref - ours).abs().max().item()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("window", [8, 16])
@pytest.mark.parametrize("mult", [0.5, 1, 3, 4])
def test_mistral_window_parity(hf, toks, attn, window, mult):
    length = int(window * mult) - (1 if mult < 1 else 0)  # < W, = W, 3W, 4W
    assert _parity(hf("mistral", window, attn), toks(length)) <= TOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mistral_no_window_parity(hf, toks, attn):
    assert _parity(hf("mistral", None, attn), toks(48)) <= TOL


def test_batch_parity(hf, toks):
    assert _parity(hf("mistral", 8, "sdpa"), toks(30, batch=3)) <= TOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("n_experts", [4, 8])
@pytest.mark.parametrize("window", [8, None])
def test_mixtral_parity(hf, toks, attn, n_experts, window):
    assert _parity(hf("mixtral", window, attn, n_experts), toks(32)) <= TOL


def test_moe_routing_matches_transformers(hf, toks):
    """The experts chosen per token and their weights equal transformers' router."""
    hf_model = hf("mixtral", 8, "eager", 4)
    native = from_transformers(hf_model)
    x = torch.randn(40, 64)
    with torch.no_grad():
        _, hf_w, hf_idx = hf_model.model.layers[0].mlp.gate(x)
        top_logits, idx = torch.topk(native.layers[0].feed_forward.gate(x), 2, dim=-1)
    assert torch.equal(idx, hf_idx)
    assert torch.allclose(torch.softmax(top_logits, -1), hf_w, atol=1e-6)
