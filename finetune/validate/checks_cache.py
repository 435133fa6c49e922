"""Cache checks: incremental decoding must score exactly what a full forward pass scores.

With a sliding window, a decoder needs only the last ``W`` keys, so Mistral keeps a rolling buffer
of ``W`` slots (position ``p`` in slot ``p % W``). These rows run the native rolling buffer with the
subject's weights past ``2 W`` tokens, where every slot has been overwritten at least once:

* ``cache.decode``: one token at a time reproduces the full re-score of the sequence;
* ``cache.prefill``: a prompt prefilled in uneven chunks (1, ``W - 1``, ``W``, ``W + 1`` ...) reproduces
  a single-shot prefill (each chunk must attend the cached tail plus itself);
* ``cache.slots``: the cache holds at most ``W`` slots per layer, holding the last ``W`` positions;
* ``cache.hf_decode[b]``: transformers' own incremental decoding (its ``DynamicCache``, the path
  evaluation and chat use) reproduces its own full forward pass past ``2 W``.
"""

from __future__ import annotations

import torch

from finetune.native import RollingKVCache

from .checks_attention import PARITY_TOL, parity_tolerance
from .report import CheckResult, relative_tolerance, skipped
from .probe import Probe

_DECODE_STEPS = 64  # decode at most this many tokens one by one (the rest is prefilled)
_QUICK_DECODE_STEPS = 24  # ... with a length cap


def _decode_split(probe: Probe, length: int) -> int:
    """How many leading tokens are prefilled before decoding one by one (the last ones, past 2W)."""
    steps = min(length - 3, _QUICK_DECODE_STEPS if probe.cap is not None else _DECODE_STEPS)
    return length - steps


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = float((a - b).abs().max())
    return diff, diff / max(1.0, float(b.abs().max()))


def _fresh_cache(model) -> RollingKVCache:
    return RollingKVCache(model.config, 1, device=model.output.weight.device, dtype=model.output.weight.dtype)


def check_decode(probe: Probe) -> tuple[CheckResult, CheckResult]:
    """``cache.decode`` and ``cache.slots``: decode past ``2 W`` one token at a time."""
    if probe.subject.native is None:
        why = "no native reference for this model"
        return skipped("cache.decode", why), skipped("cache.slots", why)
    length = probe.long_length()
    ids = probe.ids(length, seed=3)
    full = probe.native_logits(length, seed=3)
    model = probe.native_model()
    cache, device = _fresh_cache(model), model.output.weight.device
    prefill = _decode_split(probe, length)
    steps = []
    with torch.no_grad():
        w = model.config.sliding_window or prefill
        for start in range(0, prefill, w):
            model(ids[:, start : min(start + w, prefill)].to(device), cache)
        for t in range(prefill, length):
            steps.append(model(ids[:, t : t + 1].to(device), cache).float().cpu())
    incremental = torch.cat(steps, dim=1)
    diff, rel = _rel(incremental, full[:, prefill:])
    decode = CheckResult(
        "cache.decode", rel <= PARITY_TOL, diff, relative_tolerance(PARITY_TOL),
        f"prefill {prefill} tokens, then decode positions {prefill}..{length - 1} one at a time vs the full "
        f"re-score ({probe.window_note()})",
    )
    return decode, _slots_row(probe, cache, length)


def _slots_row(probe: Probe, cache: RollingKVCache, length: int) -> CheckResult:
    w = probe.window
    slot_bytes = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    if w is None:
        ok = cache.num_slots == length
        return CheckResult("cache.slots", ok, cache.num_slots, f"== {length} (no window)",
                           f"no window: the cache keeps all {length} tokens, as full attention needs "
                           f"({slot_bytes} bytes)")
    held = sorted(int(p) for p in cache.positions())
    ok = cache.num_slots <= w and held == list(range(length - w, length))
    detail = (f"after {length} tokens (> 2W) each layer holds {cache.num_slots} slots = positions "
              f"{held[0]}..{held[-1]}, {slot_bytes} bytes in all ({probe.window_note()})")
    if not ok:
        detail = f"expected the last {w} positions {length - w}..{length - 1}; " + detail
    return CheckResult("cache.slots", ok, cache.num_slots, f"<= {w} ({'scaled ' if probe.scaled else ''}W)", detail)


def check_prefill(probe: Probe) -> CheckResult:
    """Chunked prefill (uneven chunks around ``W``) reproduces a single-shot prefill."""
    if probe.subject.native is None:
        return skipped("cache.prefill", "no native reference for this model")
    w = probe.window or 16
    length = probe.fit(5 * w + 2)  # room for every chunk size of the pattern
    ids = probe.ids(length, seed=4)
    pattern = [1, max(1, w - 1), w, w + 1, 2 * w + 1]
    chunks, start, k = [], 0, 0
    while start < length:
        size = min(pattern[k % len(pattern)], length - start)
        chunks.append((start, start + size))
        start, k = start + size, k + 1
    model = probe.native_model()
    device = model.output.weight.device
    with torch.no_grad():
        single = model(ids.to(device), _fresh_cache(model)).float().cpu()
        cache = _fresh_cache(model)
        pieces = [model(ids[:, a:b].to(device), cache).float().cpu() for a, b in chunks]
    diff, rel = _rel(torch.cat(pieces, dim=1), single)
    sizes = [b - a for a, b in chunks]
    return CheckResult(
        "cache.prefill", rel <= PARITY_TOL, diff, relative_tolerance(PARITY_TOL),
        f"{length} tokens prefilled in chunks {sizes} vs in one chunk ({probe.window_note()})",
    )


def check_hf_decode(probe: Probe, backend: str) -> CheckResult:
    """Transformers' incremental decoding with its own cache reproduces its full forward pass."""
    name = f"cache.hf_decode[{backend}]"
    length = probe.long_length()
    ids = probe.ids(length, seed=3)
    full = probe.hf_logits(backend, length, seed=3)
    prefill = _decode_split(probe, length)
    steps = []
    with probe.subject.driving(backend, probe.hf_window) as model, torch.no_grad():
        device = model.device
        out = model(input_ids=ids[:, :prefill].to(device), use_cache=True)
        past = out.past_key_values
        for t in range(prefill, length):
            out = model(input_ids=ids[:, t : t + 1].to(device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits.float().cpu())
    tol = parity_tolerance(probe, backend)
    diff, rel = _rel(torch.cat(steps, dim=1), full[:, prefill:])
    detail = (f"transformers' cache ({type(past).__name__}): prefill {prefill}, decode to {length - 1} one at a "
              f"time vs its own full forward ({probe.window_note()})")
    if rel > tol:
        detail = "incremental decoding drifts from the full forward: generation sees a different model; " + detail
    return CheckResult(name, rel <= tol, diff, relative_tolerance(tol), detail)


def cache_checks(probe: Probe) -> list[CheckResult]:
    """The native rolling-buffer rows: decode, prefill, slots."""
    decode, slots = check_decode(probe)
    return [decode, check_prefill(probe), slots]
