"""Attention checks, per backend: the mask actually applied, logits parity, window sensitivity.

Nothing here trusts the config. Each backend (eager, sdpa, flash_attention_2 when it can run) is
measured on the transformers model itself:

* ``attention.window[b]`` reads the mask off the first decoder layer (:meth:`Subject.mask_probe`):
  with its queries zeroed, attention is uniform over whatever the mask admits; mark the value at
  key ``j`` and see which query outputs move: exactly those whose mask admits ``j``; every other
  output is bit-for-bit unchanged, whatever the weights. So the count of keys per row is exact:
  ``W`` past the window under Mistral's rule ``i - W < j <= i``, ``W + 1`` under the old off-by-one,
  all of them when the window is silently ignored.
* ``parity[b]``: logits equal the native reference's at lengths ``< W``, ``= W`` and ``3 W`` (float32,
  tolerance ``1e-4 x max(1, max |logit|)``). On failure the reference is re-run with the usual
  suspects (window ``W - 1``, ``W + 1``, none; Mistral's grouped KV-head map; an interleaved map)
  and the row names the one the model matches.
* ``window.sensitivity[b]``: past ``W`` the logits differ from the same weights with the window
  removed; a window silently ignored makes them equal.
"""

from __future__ import annotations

import torch

from finetune.native import grouped_kv_heads, sliding_window_mask

from .report import CheckResult, relative_tolerance, skipped
from .probe import Probe

PARITY_TOL = 1e-4  # float32: max |diff| / max(1, max |logit|)
HALF_PARITY_TOL = 3e-2  # bfloat16 backends (flash_attention_2)
SENSITIVITY_MIN = 1e-2  # past W, windowed vs full attention must differ at least this much (relative)
_FULL_PROBE = 64  # up to this length every position is probed; beyond it, a spread of positions
_PROBE_BUDGET = 2**27  # attention scores per probe batch (eager materialises rows x heads x T x T)


def available_backends() -> list[str]:
    """eager and sdpa always; flash_attention_2 when flash-attn is importable and a GPU is present."""
    backends = ["eager", "sdpa"]
    try:
        from transformers.utils import is_flash_attn_2_available

        if torch.cuda.is_available() and is_flash_attn_2_available():
            backends.append("flash_attention_2")
    except ImportError:  # pragma: no cover
        pass
    return backends


def known_backend(name: str) -> bool:
    """Whether transformers can run attention ``name`` (built in, or registered by the caller)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return name == "eager" or name in ALL_ATTENTION_FUNCTIONS.valid_keys()


def parity_tolerance(probe: Probe, backend: str) -> float:
    """:data:`PARITY_TOL` for float32 backends, :data:`HALF_PARITY_TOL` for bf16 / fp16 ones."""
    return HALF_PARITY_TOL if probe.subject.backend_model(backend).dtype in (torch.bfloat16, torch.float16) else PARITY_TOL


# ---------------------------------------------------------------------------- mask probe


def _probe_positions(length: int, window: int | None) -> list[int]:
    """Key positions to mark: all of them for short sequences, else a spread covering the start,
    the window edge and the steady state."""
    if length <= _FULL_PROBE:
        return list(range(length))
    w = window or length // 2
    wanted = {0, 1, w // 2, w - 1, w, w + 1, length - w - 2, length - w - 1, length // 2, length - 1}
    return sorted(p for p in wanted if 0 <= p < length)


def measure_mask(probe: Probe, backend: str) -> tuple[torch.Tensor, list[int], int]:
    """``seen[p, i]``: query ``i`` of layer 0 attends key ``positions[p]``; and the length probed."""
    length = probe.long_length()
    positions = _probe_positions(length, probe.window)
    heads = probe.subject.hf_config.get("num_attention_heads") or 1
    per_chunk = max(1, min(16, _PROBE_BUDGET // (length * length * heads)))  # eager holds T x T scores
    seen = torch.cat([
        probe.subject.mask_probe(positions[k : k + per_chunk], length, backend, probe.hf_window)
        for k in range(0, len(positions), per_chunk)
    ])
    return seen, positions, length


def check_window_keys(probe: Probe, backend: str) -> CheckResult:
    """The mask ``backend`` applies has exactly ``W`` keys per row past the window (all keys, causal,
    without a window), read off the first layer with marked values (see the module docstring)."""
    name = f"attention.window[{backend}]"
    w = probe.window
    seen, positions, length = measure_mask(probe, backend)
    pos = torch.arange(length)
    expected = sliding_window_mask(pos, torch.tensor(positions), w).T  # [P, L]: key p visible to query i
    ok = torch.equal(seen, expected)
    tolerance = (f"== {w} (scaled W)" if probe.scaled else f"== {w} (W)") if w else "all (causal)"
    if len(positions) == length:  # every key probed: count keys per query row
        counts = seen.sum(0)  # [L]
        rows = counts[w:] if w and w < length else counts
        if w is None:
            value = "all (causal)" if torch.equal(counts, pos + 1) else _span(rows)
        else:
            value = _span(rows)
        how = f"keys per query row past the window, every key of {length} probed in layer 0"
    else:  # a spread of keys probed: count the queries that see each one (= keys per row for a band)
        inside = [p for p, j in enumerate(positions) if w is None or j + w < length]
        per_key = seen[inside].sum(1) if inside else seen.sum(1)
        value = "all (causal)" if w is None and ok else _span(per_key)
        how = f"queries per key, keys {positions} probed in layer 0"
    detail = f"{how}; length {length}, {probe.window_note()}"
    if not ok:
        detail = _explain_mismatch(seen, expected, positions) + f"; {detail}"
    return CheckResult(name, ok, value, tolerance, detail)


def _span(counts: torch.Tensor) -> str:
    values = sorted(set(int(c) for c in counts))
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


def _explain_mismatch(seen: torch.Tensor, expected: torch.Tensor, positions: list[int]) -> str:
    """``query i sees keys ... expected ...`` for the last query row that differs (the furthest past
    the window, where an ignored window and an off-by-one look most different), and what it means."""
    bad = (seen != expected).any(0).nonzero().flatten()
    i = int(bad[-1])
    got = [positions[p] for p in seen[:, i].nonzero().flatten().tolist()]
    want = [positions[p] for p in expected[:, i].nonzero().flatten().tolist()]
    what = f"query {i} sees keys {_ranges(got)} ({len(got)}), expected {_ranges(want)} ({len(want)})"
    earlier = [j for j in positions if j <= i]
    if any(j > i for j in got):
        return what + ": it sees FUTURE keys (causal mask broken)"
    if len(got) > len(want) and got == earlier:
        return what + ": every earlier key, the window is ignored"
    if len(got) == len(want) + 1:
        return what + ": one key too many, the window is off by one (W+1 keys)"
    if len(got) == len(want) - 1:
        return what + ": one key too few (W-1 keys)"
    return what + (": the window is wider than declared" if len(got) > len(want) else ": the mask differs")


def _ranges(items: list[int]) -> str:
    if not items:
        return "none"
    if items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}..{items[-1]}"
    return str(items[:12]) + ("..." if len(items) > 12 else "")


# ---------------------------------------------------------------------------- parity


def _interleaved_kv_heads(n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The classic GQA mistake: query head ``h`` reads KV head ``h % n_kv_heads``."""
    return torch.arange(n_heads) % n_kv_heads


def check_parity(probe: Probe, backend: str) -> CheckResult:
    """Transformers logits under ``backend`` equal the native reference's at ``< W, = W, 3 W``."""
    name = f"parity[{backend}]"
    if probe.subject.native is None:
        return skipped(name, "no native reference for this model (" + "; ".join(probe.subject.notes) + ")")
    tol = parity_tolerance(probe, backend)
    worst, worst_rel, parts, failing = 0.0, 0.0, [], None
    for length in probe.parity_lengths():
        got, ref = probe.hf_logits(backend, length), probe.native_logits(length)
        diff = float((got - ref).abs().max())
        rel = diff / max(1.0, float(ref.abs().max()))
        worst, worst_rel = max(worst, diff), max(worst_rel, rel)
        parts.append(f"L={length}: {diff:.1e}")
        if rel > tol and failing is None:
            failing = length
    dtype = "bf16" if tol == HALF_PARITY_TOL else "fp32"
    detail = f"max |logit diff| vs native ({probe.window_note()}, {dtype}): " + ", ".join(parts)
    if probe.cap and probe.window and 3 * probe.window > probe.cap:
        detail += f" (lengths capped at {probe.cap})"
    if failing is not None:
        detail = diagnose(probe, backend, failing, tol) + "; " + detail
    return CheckResult(name, failing is None, worst, relative_tolerance(tol), detail)


def diagnose(probe: Probe, backend: str, length: int, tol: float) -> str:
    """Which plausible mistake the transformers model matches, at ``length``."""
    got = probe.hf_logits(backend, length)
    ids = probe.ids(length)
    cfg = probe.subject.native.config
    w = probe.window
    candidates: list[tuple[str, object, object]] = []
    if w is not None:
        candidates += [(f"window W-1={w - 1}", w - 1, None), (f"window W+1={w + 1}", w + 1, None),
                       ("no window (window ignored)", None, None)]
    else:
        candidates += [(f"a window of {max(1, length // 4)}", max(1, length // 4), None)]
    if probe.subject.native.kv_head_map is not grouped_kv_heads:
        candidates.append(("Mistral's grouped KV-head map h // (heads/kv_heads) (the reference's map is wrong)",
                           w, grouped_kv_heads))
    if cfg.n_kv_heads not in (1, cfg.n_heads):
        candidates.append(("an interleaved KV-head map h % kv_heads", w, _interleaved_kv_heads))
    for label, window, kv_map in candidates:
        model = probe.native_model(window, kv_map)
        with torch.no_grad():
            ref = model(ids.to(next(model.parameters()).device)).float().cpu()
        if float((got - ref).abs().max()) / max(1.0, float(ref.abs().max())) <= tol:
            return f"transformers matches the native model with {label} at L={length}"
    return f"transformers matches none of: window W-1 / W+1 / none, grouped or interleaved KV map (L={length})"


# ---------------------------------------------------------------------------- sensitivity


def check_sensitivity(probe: Probe, backend: str) -> CheckResult:
    """Past ``W`` the logits differ from the same weights with the window removed."""
    name = f"window.sensitivity[{backend}]"
    w = probe.window
    if w is None:
        return skipped(name, "the model declares no sliding window")
    if probe.subject.native is None:
        return skipped(name, "no native reference for this model")
    length = probe.fit(3 * w)
    if length <= w:
        return skipped(name, f"length cap {probe.cap} does not reach past W={w}")
    got = probe.hf_logits(backend, length)
    full = probe.native_logits(length, window=None)
    scale = max(1.0, float(full.abs().max()))
    past = float((got - full)[:, w:].abs().max()) / scale
    before = float((got - full)[:, :w].abs().max()) / scale
    ok = past >= SENSITIVITY_MIN
    detail = (f"relative |logits - logits without window| past W: {past:.2e}, before W: {before:.1e} "
              f"(length {length}, {probe.window_note()})")
    if not ok:
        detail = "past the window the logits equal full attention: the window is silently ignored; " + detail
    return CheckResult(name, ok, past, f">= {SENSITIVITY_MIN:g}", detail)
