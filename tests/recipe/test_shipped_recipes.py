"""The recipes that ship for real models load, resolve and target the right modules — no download."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.model.adapters import peft_config
from finetune.model.tiny import tiny_config
from finetune.recipe.load import load_recipe
from tests.conftest import REPO, run_cli

RECIPES = REPO / "recipes"


def test_mistral_7b_instruct_v3_recipe():
    r = load_recipe(RECIPES / "mistral-7b-qlora-instruct-v3.yaml")
    assert r.model.base == "mistralai/Mistral-7B-v0.1"
    assert r.model.quantization == "4bit"
    assert r.data.sources[0].path == "mosaicml/instruct-v3" and r.data.sources[0].format == "instruct-v3"
    assert r.data.template == "mistral"  # the base model ships no chat template
    assert r.data.train_on == "responses"
    assert r.lora.target_modules == "all-linear"
    assert r.train.gradient_checkpointing and r.train.eval_steps and r.train.save_steps


def test_mistral_instruct_v03_chat_recipe():
    r = load_recipe(RECIPES / "mistral-7b-instruct-v0.3-qlora-chat.yaml")
    assert r.model.base == "mistralai/Mistral-7B-Instruct-v0.3"
    assert {s.format for s in r.data.sources} == {"messages"}
    assert r.data.validation_sources


def test_mixtral_recipe_adapts_attention_and_leaves_router_alone():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    r = load_recipe(RECIPES / "mixtral-8x7b-qlora.yaml")
    assert r.model.base == "mistralai/Mixtral-8x7B-v0.1"
    model = AutoModelForCausalLM.from_config(tiny_config("mixtral", vocab_size=1000, hidden_size=64, num_heads=4,
                                                         intermediate_size=64, num_layers=2, num_experts=4))
    peft_model = get_peft_model(model, peft_config(r.lora))
    adapted = {name for name, _ in peft_model.named_modules() if name.endswith("lora_A")}
    assert any("self_attn.q_proj" in n for n in adapted) and any("self_attn.o_proj" in n for n in adapted)
    assert not any(".mlp." in n for n in adapted)  # router and experts untouched
    router = [p for n, p in peft_model.named_parameters() if "mlp.gate" in n]
    assert router and not any(p.requires_grad for p in router)


@pytest.mark.parametrize("name", ["mistral-7b-qlora-instruct-v3.yaml", "mistral-7b-instruct-v0.3-qlora-chat.yaml",
                                  "mixtral-8x7b-qlora.yaml", "quickstart.yaml", "quickstart-dpo.yaml"])
def test_recipe_check_resolves(name):
    result = run_cli("recipe", "check", f"recipes/{name}", "--set", "train.max_steps=200")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 200" in result.stdout


def test_tiny_mixtral_trains_a_few_steps(tmp_path):
    """A tiny random Mixtral (v0.3 tokenizer, 4 experts) through the real pipeline in 4-bit."""
    from finetune.model.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny-mixtral", arch="mixtral", tokenizer="v3", num_experts=4,
                                 hidden_size=64, intermediate_size=128, sliding_window=None, rope_theta=1e6)
    rows = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(str(k) for k in range(1, i + 2))}]}
            for i in range(24)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = run_cli(
        "train", "recipes/mixtral-8x7b-qlora.yaml",
        "--set", f"model.base={model_dir}", "--set", f"data.sources=[{{path: {data}, format: messages}}]",
        "--set", "data.validation_sources=[]", "--set", "data.validation_ratio=0.2",
        "--set", "train.max_steps=4", "--set", "train.micro_batch_size=4", "--set", "train.gradient_accumulation_steps=1",
        "--set", "train.optimizer=adamw_torch", "--set", "train.eval_steps=null", "--set", "train.save_steps=null",
        "--set", "train.gradient_checkpointing=false", "--set", "train.learning_rate=1e-3",
        "--output", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    assert torch.isfinite(torch.tensor(summary["train_loss"]))
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
