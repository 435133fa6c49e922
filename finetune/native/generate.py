"""Text generation with the native model and the rolling KV cache.

One sequence at a time, on purpose: this is a reference to check a model against, not a server.
The prompt is prefilled in chunks (``W`` tokens by default), then tokens are decoded one by one;
the cache never holds more than ``W`` slots per layer, so memory does not grow with the output.

Decoding rules: ``temperature == 0`` is greedy (argmax, the first index on ties, like
``torch.argmax`` in transformers); otherwise logits are divided by the temperature and, with
``top_p < 1``, restricted to the smallest set of most likely tokens whose probability reaches
``top_p`` (nucleus sampling). Sampling draws from a ``torch.Generator``: pass one, or a ``seed``, to
make a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .cache import RollingKVCache
from .model import Transformer


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token id from a ``[vocab]`` row of logits."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep a token if the mass *before* it is still below top_p (so the top token always stays).
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def stream(
    model: Transformer,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    prefill_chunk: int | None = None,
    cache: RollingKVCache | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time (an ``eos_id`` is yielded, then generation stops).

    ``prefill_chunk`` defaults to the window (whole prompt at once without a window). Pass a
    ``cache`` to inspect it afterwards or to continue a conversation; it must be fresh or hold
    exactly the tokens that preceded ``prompt``. Once the iterator is exhausted the cache holds the
    prompt and every yielded token (each token is fed back after it is yielded).
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt, dtype=torch.long, device=device).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("the prompt must hold at least one token")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if cache is None:
        cache = RollingKVCache(model.config, 1, device=device, dtype=model.output.weight.dtype)
    chunk = prefill_chunk or model.config.sliding_window or ids.shape[1]

    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            logits = model(ids[:, start : start + chunk], cache)
        for _ in range(max_new_tokens):
            token = sample_next(logits[0, -1], temperature=temperature, top_p=top_p, generator=generator)
            yield token
            logits = model(torch.tensor([[token]], device=device), cache)  # the cache keeps every token
            if token == eos_id:
                return


def generate(
    model: Transformer,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    on_token: Callable[[int], object] | None = None,
    **kwargs,
) -> list[int]:
    """The new token ids as a list; ``on_token(id)`` is called as each one is produced.

    Keyword arguments are those of :func:`stream` (temperature, top_p, seed, generator, eos_id,
    prefill_chunk, cache).
    """
    out = []
    for token in stream(model, prompt, max_new_tokens, **kwargs):
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out
