"""Generation with the rolling cache: greedy equals transformers, sampling is reproducible."""

import pytest
import torch

from finetune.native import RollingKVCache, from_transformers, generate, stream

W = 8


def _hf_greedy(hf_model, prompt, n):
    hf_model.generation_config.eos_token_id = None  # random weights: never stop early
    out = hf_model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("arch,attn", [("mistral", "sdpa"), ("mistral", "eager"), ("mixtral", "sdpa")])
@pytest.mark.parametrize("prompt_len", [5, 2 * W + 3])
def test_greedy_equals_transformers(hf, toks, arch, attn, prompt_len):
    hf_model = hf(arch, W, attn)
    prompt = toks(prompt_len, seed=1)
    expected = _hf_greedy(hf_model, prompt, 3 * W)
    native = from_transformers(hf_model)
    assert generate(native, prompt[0], 3 * W) == expected
    assert generate(native, prompt[0].tolist(), 3 * W, prefill_chunk=3) == expected
    assert generate(native.with_window(W + 1), prompt[0], 3 * W) != expected  # the comparison has teeth


def test_cache_stays_bounded_during_generation(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    cache = RollingKVCache(native.config)
    out = generate(native, toks(10)[0], 3 * W, cache=cache)
    assert len(out) == 3 * W and cache.seen == 10 + 3 * W and cache.num_slots == W


def test_sampling_is_reproducible(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    prompt = toks(6)[0]
    a = generate(native, prompt, 2 * W, temperature=1.0, top_p=0.9, seed=7)
    b = generate(native, prompt, 2 * W, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = generate(native, prompt, 2 * W, temperature=1.0, top_p=0.9, seed=8)
    assert a == b and a != c


def test_tiny_top_p_is_greedy(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    prompt = toks(6)[0]
    assert generate(native, prompt, W, temperature=1.0, top_p=1e-6, seed=0) == generate(native, prompt, W)


def test_stream_callback_and_eos(hf, toks):
    native = from_transformers(hf("mistral", W, "sdpa"))
    prompt = toks(6)[0]
    full = generate(native, prompt, 2 * W)
    seen = []
    assert generate(native, prompt, 2 * W, on_token=seen.append) == seen == full
    assert list(stream(native, prompt, 2 * W)) == full
    eos = full[5]
    stopped = generate(native, prompt, 2 * W, eos_id=eos)
    assert stopped == full[: full.index(eos) + 1]  # EOS is returned, then generation stops
