"""Build the native model from Hugging Face weights: a model folder or a live transformers model.

Both routes go through :func:`native_state_dict`, one explicit table from HF parameter names to the
native ones. It understands the two Mixtral expert layouts in circulation:

* checkpoint files (Hub, and what transformers 5 still *writes*): one tensor per expert,
  ``block_sparse_moe.experts.{e}.w1/w2/w3.weight`` and ``block_sparse_moe.gate.weight``;
* live transformers 5 modules: fused ``mlp.experts.gate_up_proj [E, 2*ffn, dim]`` (gate rows first,
  then up) and ``mlp.experts.down_proj [E, dim, ffn]``, router ``mlp.gate.weight``.

Loading is strict: a missing or unexpected tensor is an error that names the keys, never a silently
random weight. The model is created on the ``meta`` device and the tensors are assigned, so nothing is
allocated twice (with a live model and no dtype/device change, the native weights share its storage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .model import KVHeadMap, NativeConfig, Transformer, grouped_kv_heads

_RENAMES = {  # HF suffix (after "model.layers.{i}.") -> native suffix (after "layers.{i}.")
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.gate.weight": "feed_forward.gate.weight",
    "block_sparse_moe.gate.weight": "feed_forward.gate.weight",
}
_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LEGACY_EXPERT = re.compile(r"block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def native_state_dict(hf_state: Mapping[str, torch.Tensor], config: NativeConfig) -> dict[str, torch.Tensor]:
    """Rename (and for fused Mixtral experts, split) an HF ``MistralForCausalLM`` /
    ``MixtralForCausalLM`` state dict into native parameter names. Unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, t in hf_state.items():
        if key in _TOP:
            out[_TOP[key]] = t
            continue
        m = _LAYER.fullmatch(key)
        if not m:
            unknown.append(key)
            continue
        i, rest = m.groups()
        if rest in _RENAMES:
            out[f"layers.{i}.{_RENAMES[rest]}"] = t
        elif legacy := _LEGACY_EXPERT.fullmatch(rest):
            e, w = legacy.groups()
            out[f"layers.{i}.feed_forward.experts.{e}.{w}.weight"] = t
        elif rest == "mlp.experts.gate_up_proj":  # [E, 2*ffn, dim]: rows [:ffn] gate (w1), [ffn:] up (w3)
            for e in range(t.shape[0]):
                out[f"layers.{i}.feed_forward.experts.{e}.w1.weight"] = t[e, : config.hidden_dim]
                out[f"layers.{i}.feed_forward.experts.{e}.w3.weight"] = t[e, config.hidden_dim :]
        elif rest == "mlp.experts.down_proj":  # [E, dim, ffn]
            for e in range(t.shape[0]):
                out[f"layers.{i}.feed_forward.experts.{e}.w2.weight"] = t[e]
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"unexpected tensors for a native {'Mixtral' if config.n_experts else 'Mistral'}: {unknown[:8]}")
    if config.tie_embeddings:
        out.pop("output.weight", None)  # the output layer *is* the embedding; loaded through it
    return out


def build_native(
    config: NativeConfig,
    hf_state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kv_head_map: KVHeadMap = grouped_kv_heads,
) -> Transformer:
    """Create a :class:`Transformer` for ``config`` holding the weights of ``hf_state``."""
    state = native_state_dict(hf_state, config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(config, kv_head_map=kv_head_map)
    expected = set(model.state_dict())
    if config.tie_embeddings:
        expected.discard("output.weight")
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise KeyError(f"weights do not fit the config: missing {missing[:8]}, unexpected {extra[:8]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: ``model.safetensors`` or the shards of its index."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        # "model*" first: Hub repos may also hold Mistral's own consolidated.safetensors (other names).
        files = sorted(p.name for p in folder.glob("model*.safetensors")) or sorted(
            p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def load_from_folder(
    folder: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sliding_window: Any = "config",
    kv_head_map: KVHeadMap = grouped_kv_heads,
) -> Transformer:
    """Native model from an HF folder (``config.json`` + safetensors), Mistral or Mixtral.

    ``sliding_window`` overrides the config's window (``None`` = full attention) when given.
    """
    folder = Path(folder)
    config = NativeConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
    if sliding_window != "config":
        config = config.replace(sliding_window=sliding_window)
    return build_native(config, _read_safetensors(folder), dtype=dtype, device=device, kv_head_map=kv_head_map)


def from_transformers(
    hf_model: Any,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kv_head_map: KVHeadMap = grouped_kv_heads,
) -> Transformer:
    """Native model from a live ``MistralForCausalLM`` / ``MixtralForCausalLM`` (its config and
    ``state_dict()``). Quantized or adapter-wrapped models must be merged/dequantized first."""
    return build_native(
        NativeConfig.from_hf_config(hf_model.config), hf_model.state_dict(),
        dtype=dtype, device=device, kv_head_map=kv_head_map,
    )
