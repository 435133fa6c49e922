"""Every check passes on good tiny models: Mistral (v1 tokenizer, W=8), Mixtral (v3, no window),
a windowed Mixtral, a run folder whose adapter is merged on the fly, a recipe, and under a length cap."""

from __future__ import annotations

import pytest
import torch
import yaml
from validate_helpers import W, by_name, failing

from finetune.validate import fast_subset, resolve_target, run_checks

ROW_GROUPS = ("config.", "template.", "attention.window[", "parity[", "window.sensitivity[", "cache.", "training.")


@pytest.mark.parametrize("model", ["tiny_mistral", "tiny_mixtral", "tiny_mixtral_window"])
def test_every_check_passes(request, model):
    rows = run_checks(request.getfixturevalue(model))
    assert failing(rows) == []
    names = [r.name for r in rows]
    for group in ROW_GROUPS:
        assert any(n.startswith(group) for n in names), group
    for backend in ("eager", "sdpa"):
        assert f"parity[{backend}]" in names and f"attention.window[{backend}]" in names


def test_measurements_on_windowed_mistral(tiny_mistral):
    rows = by_name(run_checks(tiny_mistral, backends=["sdpa"]))
    assert rows["attention.window[sdpa]"].value == str(W)  # measured, not read from the config
    assert rows["config.version"].value == "v0.1-like"
    assert rows["parity[sdpa]"].value <= 1e-4
    assert "L=7" in rows["parity[sdpa]"].detail and "L=24" in rows["parity[sdpa]"].detail  # < W, = W, 3W
    assert rows["window.sensitivity[sdpa]"].value > 1e-2
    assert rows["cache.slots"].value == W
    assert rows["template.inst"].passed and rows["template.bos"].value == 1


def test_no_window_model_sees_every_key(tiny_mixtral):
    rows = by_name(run_checks(tiny_mixtral, backends=["sdpa"]))
    assert rows["attention.window[sdpa]"].value == "all (causal)"
    assert "L=64" in rows["parity[sdpa]"].detail and "L=256" in rows["parity[sdpa]"].detail
    assert rows["window.sensitivity[sdpa]"].value == "n/a"
    assert rows["config.version"].value == "v0.2/v0.3-like"


def test_length_cap_scales_the_window_down(tiny_mistral):
    """--max-length 16 < 3W: the window rows run at W=5 on both sides and say so."""
    rows = run_checks(tiny_mistral, backends=["sdpa"], max_length=16)
    assert failing(rows) == []
    named = by_name(rows)
    assert named["attention.window[sdpa]"].value == "5"
    assert "scaled 8->5" in named["parity[sdpa]"].detail


def test_driving_restores_the_live_model(tiny_mistral):
    subject = resolve_target(tiny_mistral)
    run_checks(subject, max_length=16)
    assert subject.model.config.sliding_window == W
    assert subject.model.config._attn_implementation == "sdpa"
    assert all(p.requires_grad for p in subject.model.parameters()) and not subject.model.training


def _write_recipe(path, base):
    recipe = {
        "model": {"base": str(base), "quantization": "none"},
        "data": {"sources": [{"path": "unused.jsonl", "format": "messages"}], "template": "mistral"},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_folder_merges_the_adapter(tiny_mistral, tmp_path):
    from transformers import AutoModelForCausalLM

    from finetune.model.adapters import attach_lora
    from finetune.recipe.schema import LoraConfig

    base = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=torch.float32)
    peft_model = attach_lora(base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), False)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking, non-zero update
    run = tmp_path / "runs" / "tiny-1"
    peft_model.save_pretrained(run / "adapter")
    _write_recipe(run / "recipe.yaml", tiny_mistral)

    subject = resolve_target(run)
    assert subject.kind == "run" and any("merged" in n for n in subject.notes)
    pristine = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=torch.float32)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(subject.model.state_dict()[q], pristine.state_dict()[q])  # the update is in
    assert all("lora" not in k for k in subject.model.state_dict())
    rows = run_checks(subject, backends=["sdpa"])
    assert failing(rows) == []


def test_recipe_target(tiny_mistral, tmp_path):
    rows = run_checks(_write_recipe(tmp_path / "r.yaml", tiny_mistral), backends=["sdpa"], quick=True)
    assert failing(rows) == []


def test_fast_subset(tiny_mistral):
    rows = fast_subset(tiny_mistral)
    names = [r.name for r in rows]
    assert failing(rows) == []
    assert [n for n in names if n.startswith("parity")] == ["parity[sdpa]"]
    assert {"config.version", "template.inst", "template.bos"} <= set(names)
    assert not any(n.startswith(("cache.", "training.", "attention.")) for n in names)


def test_length_cap_rules():
    from finetune.validate.probe import length_cap

    assert length_cap() == 4096 and length_cap(quick=True) == 256
    assert length_cap(quick=True, max_length=64) == 64 and length_cap(max_length=0) is None
