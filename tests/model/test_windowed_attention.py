"""sdpa_windowed gives transformers' sdpa result, in logits and in gradients, while skipping the keys
outside the sliding window."""

from __future__ import annotations

import pytest
import torch

from finetune.model import windowed_attention
from finetune.model.windowed_attention import attention_backend


def tiny_mistral(attention: str, window: int):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                           max_position_embeddings=256, attn_implementation=attention_backend(attention))
    return MistralForCausalLM(config)


def count_kernel_calls(monkeypatch) -> list:
    calls = []
    kernel = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    return calls


def saved_bytes(model, input_ids) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward pass."""
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    return sum(storages.values())


def logits_and_gradients(model, **batch):
    model.zero_grad()
    logits = model(**batch, use_cache=False).logits
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    (logits[mask] ** 2).mean().backward()  # padding positions are not compared or trained
    return logits[mask].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("padded", [False, True])
def test_windowed_equals_sdpa_in_logits_and_gradients(monkeypatch, padded):
    monkeypatch.setattr(windowed_attention, "QUERY_BLOCK", 8)
    calls = count_kernel_calls(monkeypatch)
    input_ids = torch.randint(3, 300, (2, 70), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": input_ids}
    if padded:
        batch["attention_mask"] = torch.ones_like(input_ids)
        batch["attention_mask"][1, 45:] = 0  # right padding, as the SFT collator pads
    expected_logits, expected_grads = logits_and_gradients(tiny_mistral("sdpa", window=16), **batch)
    calls.clear()
    logits, grads = logits_and_gradients(tiny_mistral("sdpa_windowed", window=16), **batch)

    assert len(calls) == 2 * 9  # 2 layers × ceil(70 / 8) query blocks: the windowed path really ran
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6, rtol=1e-4), name


def test_short_rows_and_no_window_fall_back_to_sdpa(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    input_ids = torch.randint(3, 300, (1, 40))
    for window in (None, 16):  # no window at all; a row shorter than window + QUERY_BLOCK
        calls.clear()
        with torch.no_grad():
            tiny_mistral("sdpa_windowed", window=window)(input_ids=input_ids, use_cache=False)
        assert len(calls) == 2  # one whole-sequence call per layer


def test_keys_and_values_are_repeated_once_not_once_per_block(monkeypatch):
    monkeypatch.setattr(windowed_attention, "QUERY_BLOCK", 8)
    input_ids = torch.randint(3, 300, (2, 120))
    windowed = saved_bytes(tiny_mistral("sdpa_windowed", window=16), input_ids)
    plain = saved_bytes(tiny_mistral("sdpa", window=16), input_ids)
    assert windowed <= plain * 1.05, (windowed, plain)  # per-block copies would be ~3× the K/V
