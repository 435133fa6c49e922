"""A small, readable, pure-PyTorch Mistral / Mixtral.

Why it exists: to check that a model attends the way Mistral does (sliding window, grouped-query
attention, RoPE, top-2 routing) without trusting the library that trained it. Every rule that a
broken model could get wrong is written out once, here, in plain PyTorch:

* RMSNorm computed in float32, as in Mistral and transformers.
* RoPE in the Hugging Face ``rotate_half`` layout (the HF conversion permutes q/k rows so that the
  two halves of a head are the real / imaginary parts; the original reference code interleaves).
* Grouped-query attention: query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``
  (:func:`grouped_kv_heads`; swap it with :meth:`Transformer.set_kv_head_map` to test a validator).
* Sliding window: query at absolute position ``i`` sees keys ``j`` with ``i - W < j <= i``, i.e.
  ``W`` keys including itself (:func:`sliding_window_mask`). ``W = None`` is plain causal attention.
* SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)``; Mixtral replaces it by a sparse mixture of experts
  with top-k routing and a softmax over the k selected router logits.

Parameter names follow Mistral's reference code (``tok_embeddings``, ``attention.wq`` ...), but the
weights are in the Hugging Face layout; :mod:`finetune.native.load` maps HF checkpoints onto them.
The attention window lives in :class:`NativeConfig` only; :meth:`Transformer.with_window` gives a
weight-sharing view with another window (e.g. ``W + 1``) so a check can prove it is sensitive to it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .cache import RollingKVCache

KVHeadMap = Callable[[int, int], torch.Tensor]


class UnsupportedRoPE(Exception):
    """The checkpoint declares a RoPE variant (linear, dynamic, YaRN, ...) the native model does not
    implement: a reference that ignored it would make every later check meaningless."""


@dataclass(frozen=True)
class NativeConfig:
    """The architecture numbers that matter; ``n_experts == 0`` means a dense (Mistral) model."""

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    rope_theta: float
    sliding_window: int | None
    n_experts: int = 0
    n_experts_per_tok: int = 0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.n_experts and not 0 < self.n_experts_per_tok <= self.n_experts:
            raise ValueError(f"n_experts_per_tok={self.n_experts_per_tok} invalid for {self.n_experts} experts")

    @classmethod
    def from_hf_config(cls, config: Any) -> NativeConfig:
        """Read a transformers ``MistralConfig`` / ``MixtralConfig`` (or the dict of a config.json).

        Handles both transformers 5 (``rope_parameters["rope_theta"]``) and older files
        (top-level ``rope_theta``). Only the default RoPE type is implemented: anything else raises,
        because silently ignoring a RoPE scaling would make every later check meaningless.
        """
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        model_type = get("model_type")
        if model_type not in ("mistral", "mixtral"):
            raise ValueError(f"unsupported model_type {model_type!r}: expected 'mistral' or 'mixtral'")
        rope = get("rope_parameters") or get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise UnsupportedRoPE(f"rope_type {rope_type!r} is not supported by the native model")
        theta = rope.get("rope_theta", get("rope_theta"))
        if theta is None:
            raise ValueError("config has no rope_theta (neither rope_parameters['rope_theta'] nor rope_theta)")
        dim, n_heads = get("hidden_size"), get("num_attention_heads")
        moe = model_type == "mixtral"
        return cls(
            dim=dim,
            n_layers=get("num_hidden_layers"),
            head_dim=get("head_dim") or dim // n_heads,
            hidden_dim=get("intermediate_size"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads") or n_heads,
            norm_eps=get("rms_norm_eps"),
            vocab_size=get("vocab_size"),
            rope_theta=float(theta),
            sliding_window=get("sliding_window"),
            n_experts=get("num_local_experts") if moe else 0,
            n_experts_per_tok=get("num_experts_per_tok") if moe else 0,
            tie_embeddings=bool(get("tie_word_embeddings", False)),
        )

    def replace(self, **changes: Any) -> NativeConfig:
        """A copy with some fields changed, e.g. ``cfg.replace(sliding_window=None)``."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- attention rules


def grouped_kv_heads(n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Mistral's GQA mapping: query head ``h`` uses KV head ``h // (n_heads // n_kv_heads)``."""
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


def sliding_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean ``[len(q_pos), len(k_pos)]`` mask, True where query may attend key.

    Causal (``j <= i``) and, with a window ``W``, ``j > i - W``: each query sees ``W`` keys counting
    itself. This is Mistral's reference rule and transformers' ``sliding_window_overlay``
    (``kv_idx > q_idx - sliding_window``). Negative key positions mark empty cache slots.
    """
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = (k <= q) & (k >= 0)
    if window is not None:
        allowed &= k > q - window
    return allowed


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[T, head_dim]`` in the rotate_half layout, computed in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / theta**exponents
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``[B, heads, T, head_dim]``: ``x*cos + rotate_half(x)*sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)


# ----------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in float32 then cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention with RoPE; the mask and the KV-head map come from the caller."""

    def __init__(self, cfg: NativeConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, q_pos, kv_map, window, cache=None, layer=0):
        """``x [B, T, dim]`` at absolute positions ``q_pos [T]``; ``kv_map [n_heads]`` gives the KV
        head of each query head; with a ``cache`` the keys are its slots plus this chunk."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # keys are cached *after* RoPE
        k_pos = q_pos
        if cache is not None:  # attend the cached tail plus this chunk, by absolute positions
            k, v, k_pos = cache.update(layer, k, v, q_pos)
        k, v = k.index_select(1, kv_map), v.index_select(1, kv_map)  # [B, n_heads, S, head_dim]
        mask = sliding_window_mask(q_pos, k_pos, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` (HF: gate_proj = w1, up_proj = w3, down_proj = w2)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoeFeedForward(nn.Module):
    """Mixtral sparse MoE: each token goes to its top-k experts, weighted by a softmax over the k
    chosen router logits (equal to transformers' softmax-over-all, top-k, renormalise)."""

    def __init__(self, cfg: NativeConfig):
        super().__init__()
        self.k = cfg.n_experts_per_tok
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg.dim, cfg.hidden_dim) for _ in range(cfg.n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        top_logits, top_idx = torch.topk(self.gate(flat).float(), self.k, dim=-1)
        weights = F.softmax(top_logits, dim=-1)  # [N, k], float32
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(top_idx == e)
            if token.numel():
                y = expert(flat[token]) * weights[token, slot, None]
                out.index_add_(0, token, y.to(out.dtype))
        return out.view_as(x)


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``h + ffn(norm(h))``."""

    def __init__(self, cfg: NativeConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = MoeFeedForward(cfg) if cfg.n_experts else FeedForward(cfg.dim, cfg.hidden_dim)

    def forward(self, x, cos, sin, q_pos, kv_map, window, cache=None, layer=0):
        h = x + self.attention(self.attention_norm(x), cos, sin, q_pos, kv_map, window, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The whole model: embeddings, ``n_layers`` blocks, final norm, output projection.

    ``forward(tokens)`` scores a batch ``[B, T]`` from position 0 (rows of equal length, no
    padding mask: this is a reference, not a serving engine). ``forward(tokens, cache)`` continues a
    sequence: positions start at ``cache.seen`` and attention reads the rolling buffer.
    """

    def __init__(self, cfg: NativeConfig, kv_head_map: KVHeadMap = grouped_kv_heads):
        super().__init__()
        self.config = cfg
        self.kv_head_map = kv_head_map
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def set_kv_head_map(self, kv_head_map: KVHeadMap) -> Transformer:
        """Replace the query-head -> KV-head mapping (a test or validator can plant a wrong one)."""
        self.kv_head_map = kv_head_map
        return self

    def with_window(self, window: int | None) -> Transformer:
        """A view of this model with another sliding window; all weights are shared, none copied."""
        view = copy.copy(self)  # shallow: the submodule dict (and so every parameter) is shared
        view.config = self.config.replace(sliding_window=window)
        return view

    def forward(self, tokens: torch.Tensor, cache: RollingKVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` (in the weights' dtype) for token ids ``[B, T]``."""
        cfg = self.config
        if cache is not None and cache.window != cfg.sliding_window:
            raise ValueError(f"cache window {cache.window} != model window {cfg.sliding_window}")
        start = cache.seen if cache is not None else 0
        q_pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        cos, sin = rope_cos_sin(q_pos, cfg.head_dim, cfg.rope_theta)
        kv_map = self.kv_head_map(cfg.n_heads, cfg.n_kv_heads).to(tokens.device)
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, q_pos, kv_map, cfg.sliding_window, cache, i)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.output(self.norm(h))
