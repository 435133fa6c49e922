"""Config invariants: the numbers a checkpoint declares are self-consistent and match a Mistral release.

Shape rules (every model): ``hidden = heads x head_dim``; ``heads % kv_heads == 0`` (grouped-query
attention); the window is null or positive; ``vocab_size == len(tokenizer) == embedding rows``.

Version rule. The known releases (``VERSIONS``, from the model cards and ``config.json`` files):

    Mistral 7B v0.1      W 4096   theta 1e4   vocab 32000
    Mistral 7B v0.2      no W     theta 1e6   vocab 32000
    Mistral 7B v0.3      no W     theta 1e6   vocab 32768
    Mixtral 8x7B v0.1    no W     theta 1e6   vocab 32000
    Mixtral 8x22B v0.1   no W     theta 1e6   vocab 32768 (32000 in early uploads)

* A model with a known shape (7B dense, 8x7B, 8x22B: layers, width, heads, KV heads, FFN, experts)
  must match one release of that shape exactly in (vocab, theta, window): a 7B with theta 1e4 and no
  window, or with the v0.3 vocabulary and a 4096 window, is a config that no release ever had.
* A model of unknown shape (a tiny test model, a pruned model) is held only to what its tokenizer
  version implies, since its window may legitimately be scaled down: vocab 32768 is the v3 tokenizer,
  used only by no-window, theta 1e6 releases; vocab 32000 is the v1 tokenizer, shared by v0.1
  (window + theta 1e4) and v0.2 / Mixtral 8x7B (no window + theta 1e6), so one of those two
  combinations is required (any window size). Any other vocabulary implies no version: not checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .report import CheckResult


@dataclass(frozen=True)
class MistralVersion:
    name: str
    shape: str
    vocab: int
    rope_theta: float
    window: int | None


@dataclass(frozen=True)
class ConfigFacts:
    """The numbers of a ``config.json``, read leniently (an invalid value is reported, not raised)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    rope_theta: float
    sliding_window: Any
    n_experts: int = 0

    @classmethod
    def from_hf(cls, config: Any) -> ConfigFacts:
        """From a transformers config object or its dict (transformers 5 ``rope_parameters`` or the
        older top-level ``rope_theta``)."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        dim, heads = get("hidden_size"), get("num_attention_heads")
        rope = get("rope_parameters") or {}
        theta = rope.get("rope_theta", get("rope_theta"))
        return cls(
            dim=dim,
            n_layers=get("num_hidden_layers"),
            n_heads=heads,
            n_kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or (dim // heads if heads else 0),
            hidden_dim=get("intermediate_size"),
            vocab_size=get("vocab_size"),
            rope_theta=float(theta) if theta is not None else float("nan"),
            sliding_window=get("sliding_window"),
            n_experts=(get("num_local_experts") or 0) if get("model_type") == "mixtral" else 0,
        )


SHAPES: dict[str, dict[str, int]] = {
    "7B": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336, n_experts=0),
    "8x7B": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336, n_experts=8),
    "8x22B": dict(dim=6144, n_layers=56, n_heads=48, n_kv_heads=8, hidden_dim=16384, n_experts=8),
}

VERSIONS: tuple[MistralVersion, ...] = (
    MistralVersion("Mistral 7B v0.1", "7B", 32000, 1e4, 4096),
    MistralVersion("Mistral 7B v0.2", "7B", 32000, 1e6, None),
    MistralVersion("Mistral 7B v0.3", "7B", 32768, 1e6, None),
    MistralVersion("Mixtral 8x7B v0.1", "8x7B", 32000, 1e6, None),
    MistralVersion("Mixtral 8x22B v0.1", "8x22B", 32768, 1e6, None),
    MistralVersion("Mixtral 8x22B v0.1", "8x22B", 32000, 1e6, None),
)

# What each tokenizer vocabulary allows on a model of unknown shape: (window present?, theta).
_TOKENIZER_COMBOS: dict[int, tuple[str, tuple[tuple[bool, float], ...]]] = {
    32768: ("v3 tokenizer (7B v0.3, 8x22B)", ((False, 1e6),)),
    32000: ("v1 tokenizer (7B v0.1, v0.2, 8x7B)", ((True, 1e4), (False, 1e6))),
}


def known_shape(cfg: ConfigFacts) -> str | None:
    """``"7B"``, ``"8x7B"``, ``"8x22B"`` when the architecture numbers are those of a release."""
    for name, shape in SHAPES.items():
        if all(getattr(cfg, key) == value for key, value in shape.items()):
            return name
    return None


def _theta_eq(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def _fmt_window(w: int | None) -> str:
    return "no window" if w is None else f"W {w}"


def _fmt_theta(theta: float) -> str:
    return f"theta {theta:.0e}".replace("e+0", "e")


def check_shape(cfg: ConfigFacts) -> CheckResult:
    """``hidden_size == num_attention_heads x head_dim``."""
    product = cfg.n_heads * cfg.head_dim
    ok = product == cfg.dim
    detail = f"{cfg.n_heads} heads x {cfg.head_dim} head_dim = {product}"
    if not ok:
        detail += f", but hidden_size is {cfg.dim}: q/o projections do not match the residual width"
    return CheckResult("config.hidden_size", ok, str(cfg.dim), "== heads x head_dim", detail)


def check_gqa(cfg: ConfigFacts) -> CheckResult:
    """Query heads split evenly over KV heads."""
    ok = cfg.n_kv_heads > 0 and cfg.n_heads % cfg.n_kv_heads == 0
    group = cfg.n_heads / cfg.n_kv_heads if cfg.n_kv_heads else float("nan")
    detail = f"{cfg.n_heads} query heads / {cfg.n_kv_heads} KV heads = {group:g} queries per KV head"
    return CheckResult("config.gqa", ok, f"{cfg.n_heads}/{cfg.n_kv_heads}", "heads % kv_heads == 0", detail)


def check_window_value(window: Any) -> CheckResult:
    """The window is null (full attention) or a positive integer."""
    ok = window is None or (isinstance(window, int) and not isinstance(window, bool) and window > 0)
    detail = "full causal attention" if window is None else f"each query sees {window} keys (itself included)"
    if not ok:
        detail = f"sliding_window={window!r}: must be null or an integer > 0"
    return CheckResult("config.sliding_window", ok, str(window), "null or > 0", detail)


def check_vocab(cfg: ConfigFacts, tokenizer_len: int, embedding_rows: int, output_rows: int | None = None) -> CheckResult:
    """``vocab_size == len(tokenizer) == embedding rows`` (and output rows): a mismatch means ids
    that index past the embedding, or logits for tokens that can never be produced."""
    sizes = {"config vocab_size": cfg.vocab_size, "len(tokenizer)": tokenizer_len, "embedding rows": embedding_rows}
    if output_rows is not None:
        sizes["lm_head rows"] = output_rows
    ok = len(set(sizes.values())) == 1
    detail = ", ".join(f"{k} {v}" for k, v in sizes.items())
    if not ok:
        detail += ": they must all be equal (resize the embeddings after adding tokens, or fix vocab_size)"
    return CheckResult("config.vocab", ok, str(cfg.vocab_size), "== len(tokenizer) == embedding rows", detail)


def check_version(cfg: ConfigFacts) -> CheckResult:
    """rope theta / window / vocabulary consistent with a Mistral release (rules in the module docstring)."""
    combo = f"{_fmt_theta(cfg.rope_theta)}, {_fmt_window(cfg.sliding_window)}, vocab {cfg.vocab_size}"
    shape = known_shape(cfg)
    if shape is not None:
        candidates = [v for v in VERSIONS if v.shape == shape]
        for v in candidates:
            if v.vocab == cfg.vocab_size and _theta_eq(v.rope_theta, cfg.rope_theta) and v.window == cfg.sliding_window:
                return CheckResult("config.version", True, v.name, f"a {shape} release", f"{shape} shape with {combo}")
        expected = "; ".join(
            f"{v.name}: {_fmt_theta(v.rope_theta)}, {_fmt_window(v.window)}, vocab {v.vocab}" for v in candidates
        )
        return CheckResult(
            "config.version", False, f"no {shape} release", f"a {shape} release",
            f"{shape} shape with {combo} matches no release ({expected}); a wrong rope theta or window "
            "changes every attention score: take config.json from the release you fine-tune",
        )
    if cfg.vocab_size not in _TOKENIZER_COMBOS:
        return CheckResult(
            "config.version", True, "unknown shape", "n/a",
            f"not a known Mistral shape or vocabulary ({combo}): no version rule applies",
        )
    label, combos = _TOKENIZER_COMBOS[cfg.vocab_size]
    has_window = cfg.sliding_window is not None
    ok = any(has_window == w and _theta_eq(theta, cfg.rope_theta) for w, theta in combos)
    allowed = " or ".join(f"{'a window' if w else 'no window'} + {_fmt_theta(t)}" for w, t in combos)
    detail = f"unknown shape, vocab {cfg.vocab_size} = {label}: needs {allowed}; has {combo}"
    if not ok:
        detail += " (no release with this tokenizer has that combination)"
    value = ("v0.1-like" if has_window else "v0.2/v0.3-like") if ok else "no release"
    return CheckResult("config.version", ok, value, f"combo of the {label.split(' (')[0]}", detail)


def config_checks(subject) -> list[CheckResult]:
    """All config rows for a :class:`~finetune.validate.subject.Subject` (the config as loaded)."""
    cfg = ConfigFacts.from_hf(subject.hf_config)
    model = subject.model
    emb = model.get_input_embeddings().weight.shape[0]
    out_layer = model.get_output_embeddings()
    out_rows = out_layer.weight.shape[0] if out_layer is not None else None
    return [
        check_shape(cfg),
        check_gqa(cfg),
        check_window_value(cfg.sliding_window),
        check_vocab(cfg, len(subject.tokenizer), emb, out_rows),
        check_version(cfg),
    ]
