"""KV-cache memory and speed: native rolling-buffer generation vs transformers' ``generate``.

A tiny random Mistral with a small sliding window (W = 64 by default) generates 1W, 4W and 16W new
tokens greedily from the same prompt, once with :func:`finetune.native.generate` (a rolling buffer
of W slots per layer) and once with ``model.generate`` (transformers' default cache). Printed as a
markdown table: the KV-cache bytes held after generation, tokens per second, and whether both
produced the same tokens (they should: same weights, same window rule, greedy decoding).

The native cache must stay flat past W: W slots per layer, whatever the length.

    python bench/native_cache.py                 # W=64, 1/4/16 W, 1 thread
    python bench/native_cache.py --window 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from finetune.model.tiny import tiny_config  # noqa: E402
from finetune.native import RollingKVCache, from_transformers, generate  # noqa: E402


def build(window: int, hidden: int, layers: int, seed: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config("mistral", vocab_size=32000, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_layers=layers, num_heads=4, num_kv_heads=2, sliding_window=window)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    model.generation_config.pad_token_id = 0
    return model


def cache_bytes(cache) -> int:
    """Bytes of key/value tensors held by a native RollingKVCache or a transformers Cache."""
    if isinstance(cache, RollingKVCache):
        tensors = cache.keys + cache.values
    else:
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_native(native, prompt: torch.Tensor, n: int) -> tuple[list[int], int, float]:
    cache = RollingKVCache(native.config, 1)
    start = time.perf_counter()
    tokens = generate(native, prompt[0], n, cache=cache)
    return tokens, cache_bytes(cache), time.perf_counter() - start


def run_hf(model, prompt: torch.Tensor, n: int) -> tuple[list[int], int, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             return_dict_in_generate=True, use_cache=True)
    elapsed = time.perf_counter() - start
    return out.sequences[0, prompt.shape[1]:].tolist(), cache_bytes(out.past_key_values), elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16], help="new tokens, in windows")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    model = build(args.window, args.hidden, args.layers, args.seed)
    native = from_transformers(model)
    prompt = torch.randint(3, 32000, (1, args.prompt), generator=torch.Generator().manual_seed(args.seed))
    run_native(native, prompt, 4), run_hf(model, prompt, 4)  # warm-up

    per_token = 2 * args.layers * model.config.num_key_value_heads * model.config.head_dim * 4
    print(f"tiny Mistral: {args.layers} layers, hidden {args.hidden}, 2 KV heads x {model.config.head_dim}, "
          f"W={args.window}, fp32, {args.threads} thread(s), prompt {args.prompt} tokens; "
          f"one token of KV = {per_token} bytes, W tokens = {per_token * args.window} bytes; "
          f"transformers {transformers.__version__}, torch {torch.__version__}\n")
    print("| new tokens | native cache bytes | transformers cache bytes | native tok/s | transformers tok/s | same tokens |")
    print("|---:|---:|---:|---:|---:|---:|")
    flat = []
    for m in args.multiples:
        n = m * args.window
        nt, nb, ns = run_native(native, prompt, n)
        ht, hb, hs = run_hf(model, prompt, n)
        same = sum(a == b for a, b in zip(nt, ht)) / n
        flat.append(nb)
        print(f"| {n} ({m}W) | {nb:,} | {hb:,} | {n / ns:,.0f} | {n / hs:,.0f} | {same:.0%} |")
    verdict = "flat" if len(set(flat)) == 1 and flat[0] == per_token * args.window else "NOT flat"
    print(f"\nnative cache past W: {verdict} ({per_token * args.window:,} bytes = W slots x {args.layers} layers x K,V)")


if __name__ == "__main__":
    main()
