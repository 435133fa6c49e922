"""DPO end to end: learns from the base, uses the frozen SFT adapter as reference when starting from an SFT
run, saves only the policy, keeps one copy of the base in memory, and refuses a bad model.adapter cleanly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from finetune.data.preferences import prepare_preferences
from finetune.errors import FinetuneError
from finetune.model.adapters import POLICY, REFERENCE, adapter_dir, load_adapter, resume_lora
from finetune.model.load import load_base_model, load_tokenizer
from finetune.recipe.load import load_recipe
from finetune.train.dpo import build_dpo_trainer
from finetune.train.preference_eval import answer_logps
from finetune.train.run import attach_adapters
from tests.conftest import REPO, run_cli

RECIPE = REPO / "recipes" / "quickstart-dpo.yaml"


def test_dpo_from_base_raises_held_out_preference_accuracy(tiny_mistral, tmp_path):
    """The shipped recipe, cut to 80 steps: a fresh adapter learns to prefer the right answers."""
    out = tmp_path / "run"
    result = run_cli(
        "train", str(RECIPE), "--set", f"model.base={tiny_mistral}", "--set", "data.validation_sources.0.max_rows=45",
        "--set", "train.max_steps=80", "--output", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    print(f"\nDPO from base: preference accuracy {s['preference_accuracy_before']:.1%} -> "
          f"{s['preference_accuracy_after']:.1%}, margin {s['logp_margin_before']:+.2f} -> {s['logp_margin_after']:+.2f}, "
          f"TRL reward accuracy {s['eval_reward_accuracy_after']:.1%}, training {s['train_seconds']:.0f} s")
    assert 0.3 <= s["preference_accuracy_before"] <= 0.7  # a random model prefers either answer
    assert s["preference_accuracy_after"] >= s["preference_accuracy_before"] + 0.25
    assert s["logp_margin_after"] > s["logp_margin_before"] + 1.0
    assert s["eval_loss_before"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 0
    assert s["eval_reward_margin_before"] == pytest.approx(0.0, abs=1e-4)
    assert s["eval_loss_after"] < s["eval_loss_before"] and s["eval_reward_accuracy_after"] > 0.6
    assert "held-out preference accuracy" in result.stderr
    for name in ("recipe.yaml", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json", "metrics.jsonl",
                 "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in (out / "adapter").iterdir() if p.is_dir()] == []  # the policy alone
    assert load_recipe(out / "recipe.yaml").train.method == "dpo"


def _pairs(data):
    rows = list(data.eval)
    prompts = [r["prompt_input_ids"] for r in rows]
    return rows, prompts, [r["chosen_input_ids"] for r in rows]


def test_dpo_from_sft_run_scores_against_the_frozen_sft_adapter(quickstart_run, tiny_mistral, tmp_path):
    """Reference = the SFT adapter (not the raw base), frozen while the policy copy trains; only the policy is
    saved, and it applies to model.base with plain peft."""
    sft_run, _ = quickstart_run
    recipe = load_recipe(RECIPE, [
        f"model.base={tiny_mistral}", f"model.adapter={sft_run}", "data.sources.0.max_rows=24",
        "data.validation_sources.0.max_rows=12", "train.max_steps=3", "train.micro_batch_size=8",
        "train.learning_rate=1e-2",
    ])
    tokenizer = load_tokenizer(recipe.model)
    data = prepare_preferences(recipe.data, recipe.dpo, tokenizer)
    model = attach_adapters(recipe, load_base_model(recipe.model), adapter_dir(sft_run))
    assert set(model.peft_config) == {POLICY, REFERENCE}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(f".{REFERENCE}." in n for n in trainable)
    trainer = build_dpo_trainer(recipe, model, tokenizer, data, tmp_path / "run", [], use_cpu=True)

    step0 = trainer.evaluate()  # policy == reference: zero rewards, loss log 2
    assert step0["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert step0["eval_rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert step0["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)

    rows, prompts, chosen = _pairs(data)
    batch = trainer.data_collator(rows)
    ref_chosen, _ = trainer.compute_ref_log_probs(batch)
    sft = load_adapter(load_base_model(recipe.model), str(adapter_dir(sft_run))).eval()
    sft_chosen = answer_logps(sft, prompts, chosen, tokenizer.pad_token_id)
    with sft.disable_adapter():
        base_chosen = answer_logps(sft, prompts, chosen, tokenizer.pad_token_id)
    print(f"\nmean log p(chosen): TRL reference {ref_chosen.mean():.3f}, SFT model {sft_chosen.mean():.3f}, "
          f"raw base {base_chosen.mean():.3f}")
    torch.testing.assert_close(ref_chosen.float().cpu(), sft_chosen, atol=2e-3, rtol=0)
    assert (ref_chosen.float().cpu() - base_chosen).abs().mean() > 1.0

    trainer.train()
    policy_chosen = answer_logps(model, prompts, chosen, tokenizer.pad_token_id)
    assert (policy_chosen - sft_chosen).abs().max() > 1e-2  # the policy moved...
    ref_after, _ = trainer.compute_ref_log_probs(batch)
    torch.testing.assert_close(ref_after.float().cpu(), sft_chosen, atol=2e-3, rtol=0)  # ...the reference did not

    model.save_pretrained(tmp_path / "adapter", selected_adapters=[POLICY])
    assert not (tmp_path / "adapter" / REFERENCE).exists()
    reloaded = load_adapter(load_base_model(recipe.model), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(answer_logps(reloaded, prompts, chosen, tokenizer.pad_token_id), policy_chosen,
                               atol=2e-3, rtol=0)


def test_sft_with_model_adapter_continues_that_adapter(quickstart_run, tiny_mistral):
    sft_run, _ = quickstart_run
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [f"model.base={tiny_mistral}", f"model.adapter={sft_run}"])
    model = attach_adapters(recipe, load_base_model(recipe.model), adapter_dir(sft_run))
    assert set(model.peft_config) == {POLICY}
    saved = json.loads((sft_run / "adapter" / "adapter_config.json").read_text())
    assert model.peft_config[POLICY].r == saved["r"]
    from safetensors.torch import load_file

    weights = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    name, tensor = next((k, v) for k, v in weights.items() if "lora_B" in k)
    live = dict(model.named_parameters())[name.replace(".weight", f".{POLICY}.weight")]
    assert live.requires_grad and torch.equal(live.detach().cpu(), tensor)


def test_adapter_for_another_base_is_a_clear_error(quickstart_run, tmp_path):
    from finetune.model.tiny import build_tiny_model

    sft_run, _ = quickstart_run
    other = build_tiny_model(tmp_path / "other", hidden_size=64, intermediate_size=128, num_layers=2)
    recipe = load_recipe(RECIPE, [f"model.base={other}"])
    with pytest.raises(FinetuneError, match="do not fit model.base"):
        resume_lora(load_base_model(recipe.model), adapter_dir(sft_run), False)


def test_cli_bad_adapter_path_exits_2(tmp_path):
    result = run_cli("train", str(RECIPE), "--set", f"model.adapter={tmp_path / 'no-such-run'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert "model.adapter" in text and "no such folder" in text and "adapter_config.json" in text


def test_adapter_folder_without_adapter_is_refused(tmp_path):
    with pytest.raises(FinetuneError, match="neither a run folder"):
        adapter_dir(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(FinetuneError, match="no adapter_model.safetensors"):
        adapter_dir(tmp_path)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    mode, recipe_path, model_dir, out = sys.argv[1:4] + [Path(sys.argv[4])]
    from finetune.data.preferences import prepare_preferences
    from finetune.model.adapters import attach_lora
    from finetune.model.load import load_base_model, load_tokenizer
    from finetune.recipe.load import load_recipe
    from finetune.train import dpo
    from finetune.train.trl_compat import give_warnings_issued
    recipe = load_recipe(recipe_path, [
        f"model.base={model_dir}", "model.quantization=none", "lora.r=8", "lora.modules_to_save=[]",
        "data.sources.0.max_rows=16", "data.validation_sources=[]", "data.validation_ratio=0",
        "train.max_steps=2", "train.micro_batch_size=4",
    ])
    tokenizer = load_tokenizer(recipe.model)
    data = prepare_preferences(recipe.data, recipe.dpo, tokenizer)
    def status_bytes(key):  # this process image's own figures (ru_maxrss can carry the parent's over exec)
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) * 1024
    baseline = status_bytes("VmRSS")  # everything imported, no model yet
    model = attach_lora(load_base_model(recipe.model), recipe.lora, False)
    if mode == "lora":  # the real path: reference = the same base with the adapter disabled
        trainer = dpo.build_dpo_trainer(recipe, model, tokenizer, data, out, [], True)
    else:  # what we avoid: a second full model as ref_model
        give_warnings_issued(model)
        trainer = dpo.LeanDPOTrainer(model=model, ref_model=load_base_model(recipe.model),
                                     args=dpo.dpo_arguments(recipe, out, True, None), train_dataset=data.train,
                                     processing_class=tokenizer)
    trainer.train()
    peak = status_bytes("VmHWM")  # peak resident set size
    print(json.dumps({"baseline": baseline, "peak": peak, "steps": trainer.state.global_step}))
""")


def test_lora_reference_needs_one_copy_of_the_base_not_two(tmp_path_factory):
    """Peak RSS above the imports, each in a fresh process: reference = disabled adapter vs a second model.

    Weights are memory-mapped and load lazily, so a copy adds what gets read; the bound is the model
    without its embedding table (a forward reads few of its rows). One malloc arena and large blocks
    returned to the OS when freed keep RSS close to live memory, so repeated runs give the same figures.
    """
    from finetune.model.tiny import build_tiny_model

    hidden = 512
    model_dir = build_tiny_model(tmp_path_factory.mktemp("mem") / "model", hidden_size=hidden,
                                 intermediate_size=3 * hidden, num_layers=4)
    model_bytes = (model_dir / "model.safetensors").stat().st_size
    read_per_forward = model_bytes - 32000 * hidden * 4  # all but the embedding table
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    grown = {}
    for mode in ("lora", "two-copies"):
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, mode, str(RECIPE), str(model_dir), str(tmp_path_factory.mktemp(mode))],
            cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        assert figures["steps"] == 2
        grown[mode] = figures["peak"] - figures["baseline"]
    mib = 2**20
    print(f"\nmodel {model_bytes / mib:.0f} MiB ({read_per_forward / mib:.0f} MiB without the embedding table); peak RSS "
          f"above imports: LoRA policy + disabled-adapter reference {grown['lora'] / mib:.0f} MiB, policy + separately "
          f"loaded reference model {grown['two-copies'] / mib:.0f} MiB (+{(grown['two-copies'] - grown['lora']) / mib:.0f} MiB)")
    assert grown["two-copies"] - grown["lora"] > 0.8 * read_per_forward


def test_schema_documents_dpo_keys_and_rejects_unknown_loss():
    schema = run_cli("recipe", "schema")
    assert schema.returncode == 0
    for key in ("train.method", "model.adapter", "dpo.beta", "dpo.loss_type", "dpo.max_prompt_length",
                "dpo.max_completion_length", "data.sources[].format"):
        assert key in schema.stdout, key
    bad = run_cli("recipe", "check", str(RECIPE), "--set", "dpo.loss_type=kto")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "dpo.loss_type" in bad.stderr and "'sigmoid', 'ipo' or 'hinge'" in " ".join(bad.stderr.split())
