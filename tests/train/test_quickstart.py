"""End to end: the quickstart recipe trains, learns, writes a complete run folder, and its adapter
works with plain peft + transformers in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from finetune.recipe.load import load_recipe
from tests.conftest import REPO, run_cli


def test_quickstart_learns_the_held_out_tasks(quickstart_run):
    run, result = quickstart_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exact_match_before"] <= 0.1
    assert summary["exact_match_after"] >= 0.9
    assert summary["eval_loss_after"] < summary["eval_loss_before"] / 5
    assert summary["train_seconds"] > 0
    assert "held-out exact match" in result


def test_run_folder_is_self_describing(quickstart_run, tiny_mistral):
    run, _ = quickstart_run
    for name in ("recipe.yaml", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "tokenizer/tokenizer.json", "tokenizer/tokenizer.model", "metrics.jsonl", "loss.png", "summary.json",
                 "data_lengths.png", "report.md"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "lr" in r and "tokens_per_s" in r for r in rows)
    assert any("eval_loss" in r for r in rows)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(steps) and len(steps) >= 5
    from transformers import AutoTokenizer

    from finetune.data.text_encoder import text_encoder

    assert text_encoder(AutoTokenizer.from_pretrained(run / "tokenizer")).exact  # token-exact prompts from the run
    resolved = load_recipe(run / "recipe.yaml")  # the saved recipe is itself a valid recipe
    assert resolved.model.base == str(tiny_mistral)


def test_adapter_reproduces_accuracy_with_plain_peft_in_fresh_process(quickstart_run, tiny_mistral):
    """No mistral-ft code: transformers + peft + bitsandbytes, the prompt written as plain text."""
    run, _ = quickstart_run
    script = textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
        from peft import PeftModel
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained({str(tiny_mistral)!r}, quantization_config=q,
                                                    dtype=torch.float32, device_map={{"": "cpu"}})
        model = PeftModel.from_pretrained(base, {str(run / "adapter")!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(run / "tokenizer")!r})
        hits = 0
        rows = [json.loads(l) for l in open("data/quickstart/eval.jsonl")]
        for row in rows:
            instruction = row["prompt"].split("### Instruction\\n")[1].split("\\n\\n### Response")[0]
            ids = tok(f"[INST] {{instruction}} [/INST]", return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
            hits += tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == row["response"]
        print(json.dumps({{"exact_match": hits / len(rows)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])["exact_match"]
    summary = json.loads((run / "summary.json").read_text())
    assert fresh == pytest.approx(summary["exact_match_after"], abs=0.02)


def test_report_md_explains_the_run(quickstart_run):
    run, stderr = quickstart_run
    report = (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert report.startswith("# quickstart: done")
    for section in ("## Data", "## Training", "## Held-out results", "![loss](loss.png)", "![tokens per row](data_lengths.png)"):
        assert section in report, section
    assert "LoRA: r 16, alpha 32" in report and "trained in full: embed_tokens, lm_head" in report
    assert f"| held-out exact match | {summary['exact_match_before']:.1%} | {summary['exact_match_after']:.1%} |" in report
    assert summary["tokens_per_second"] > 0 and summary["peak_rss_mib"] > 100
    assert f"{summary['tokens_per_second']:,.0f} tokens/s" in report
    assert f"report: {run}/report.md" in " ".join(stderr.split())


def test_tensorboard_receives_the_losses(quickstart_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = quickstart_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert [e.step for e in losses] == steps  # the same log events as metrics.jsonl
    assert losses[-1].value < losses[0].value / 5
    assert "eval/loss" in events.Tags()["scalars"]


def test_a_logger_that_is_not_installed_stops_the_run_before_it_starts(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("wandb") is None  # not a dependency
    result = run_cli("train", "recipes/quickstart.yaml", "--set", "train.report_to=[wandb]", "--output", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.report_to lists wandb, which is not installed" in " ".join(result.stderr.split())
    assert not (tmp_path / "r").exists()
