"""Loading: an HF folder (safetensors) gives the same native model as the live transformers model."""

import json

import pytest
import torch

from finetune.native import NativeConfig, UnsupportedRoPE, from_transformers, load_from_folder
from finetune.native.load import build_native

W = 8


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_real_tokenizer_folder_equals_live_model(tmp_path):
    """The one test with the real Mistral vocabulary: the tokenizer's ids go through both models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.model.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "m", "mistral", sliding_window=W, hidden_size=64, num_heads=4,
                              num_kv_heads=2, intermediate_size=128)
    live = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    from_folder, from_live = load_from_folder(folder), from_transformers(live)
    _same_weights(from_folder, from_live)
    assert from_folder.config == from_live.config
    assert from_folder.config.sliding_window == W and from_folder.config.vocab_size == 32000

    ids = AutoTokenizer.from_pretrained(folder)("The sliding window of Mistral 7B is 4096 tokens wide, and "
                                                "each query sees W keys.", return_tensors="pt").input_ids
    assert ids.shape[1] > 2 * W and ids[0, 0] == 1  # BOS, then enough text to exceed the window
    with torch.no_grad():
        assert (live(ids).logits - from_folder(ids)).abs().max() <= 1e-4


def test_mixtral_checkpoint_format_equals_live_model(hf, toks, tmp_path):
    """transformers 5 keeps experts fused in memory but writes per-expert w1/w2/w3 tensors."""
    live = hf("mixtral", W, "sdpa", 4)
    live.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert any(".block_sparse_moe.experts.0.w1." in k for k in f.keys())
    assert "model.layers.0.mlp.experts.gate_up_proj" in live.state_dict()
    from_folder, from_live = load_from_folder(tmp_path), from_transformers(live)
    _same_weights(from_folder, from_live)
    ids = toks(3 * W)
    with torch.no_grad():
        assert (live(ids).logits - from_folder(ids)).abs().max() <= 1e-4


def test_window_override_and_dtype(hf, tmp_path):
    hf("mistral", W, "sdpa").save_pretrained(tmp_path)
    assert load_from_folder(tmp_path, sliding_window=None).config.sliding_window is None
    assert load_from_folder(tmp_path, dtype=torch.bfloat16).output.weight.dtype == torch.bfloat16


def test_config_from_legacy_json():
    legacy = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
              "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "vocab_size": 32000,
              "rope_theta": 10000.0, "sliding_window": 4096}  # Mistral 7B v0.1, pre-v5 config.json
    cfg = NativeConfig.from_hf_config(legacy)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.sliding_window, cfg.rope_theta, cfg.n_experts) == (128, 8, 4096, 1e4, 0)
    with pytest.raises(UnsupportedRoPE, match="'linear'"):
        NativeConfig.from_hf_config({**legacy, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type"):
        NativeConfig.from_hf_config({**legacy, "model_type": "llama"})


def test_missing_or_unknown_tensor_is_an_error(hf):
    live = hf("mistral", W, "sdpa")
    cfg = NativeConfig.from_hf_config(live.config)
    state = dict(live.state_dict())
    with pytest.raises(KeyError, match="unexpected"):
        build_native(cfg, {**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)})
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="missing"):
        build_native(cfg, state)
