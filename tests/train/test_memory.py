"""`mistral-ft estimate` predicts the measured peak memory of `mistral-ft train` (CPU: peak RSS) within
±15 % across quantization × sequence length × gradient checkpointing, and `train` warns up front when
the estimate is more than the machine has free."""

from __future__ import annotations

import json
import random
import re

import pytest
import yaml

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The benchmark's tiny Mistral (4 layers, hidden 256) and rows longer than 1024 tokens."""
    from finetune.model.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("memory")
    model = build_tiny_model(folder / "model", hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                             num_kv_heads=2, sliding_window=256)
    rng = random.Random(0)
    words = "river stone lamp garden winter paper signal orange market engine harbor cloud".split()
    with (folder / "long.jsonl").open("w") as f:
        for _ in range(8):
            f.write(json.dumps({"prompt": " ".join(rng.choices(words, k=30)),
                                "response": " ".join(rng.choices(words, k=1000))}) + "\n")
    return folder, model


def recipe(folder, model, quantization: str, length: int, checkpointing: bool, saved: tuple = ()):
    path = folder / f"{quantization}-{length}-{checkpointing}{'-saved' if saved else ''}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"base": str(model), "quantization": quantization, "compute_dtype": "fp32"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": list(saved)},
        "data": {"sources": [{"path": str(folder / "long.jsonl"), "format": "instruct-v3"}], "validation_ratio": 0,
                 "max_length": length, "overlong": "truncate"},  # every row at max_length, as estimate assumes
        "train": {"max_steps": 2, "micro_batch_size": 4, "gradient_checkpointing": checkpointing},
        "eval": {"loss": False},
        "output": {"dir": str(folder / "runs")},
    }))
    return path


@pytest.mark.parametrize("quantization, length, checkpointing, saved", [
    ("4bit", 1024, False, ()), ("4bit", 256, True, ()), ("none", 1024, True, ()), ("none", 256, False, ()),
    ("4bit", 256, False, ("embed_tokens", "lm_head")),  # the quickstart's full trainable copies: +2 × 8.2M parameters
])
def test_estimate_is_within_15_percent_of_the_measured_peak(work, quantization, length, checkpointing, saved):
    folder, model = work
    path = recipe(folder, model, quantization, length, checkpointing, saved)
    estimated = run_cli("estimate", str(path))
    assert estimated.returncode == 0, estimated.stderr[-2000:]
    for term in ("runtime (measured)", "weights", "LoRA weights, gradients, optimizer", "activations", "loss"):
        assert term in estimated.stdout
    predicted = float(re.search(r"estimated peak\s+([\d,]+) MiB", estimated.stdout).group(1).replace(",", ""))

    run = folder / "runs" / path.stem
    trained = run_cli("train", str(path), "--output", str(run), "--skip-validate")
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    measured = summary["peak_rss_mib"]
    print(f"\n{quantization} × {length} tokens, checkpointing {checkpointing}, saved {saved}: "
          f"estimate {predicted:,.0f} MiB (train's {summary['estimated_peak_mib']:,.0f}), "
          f"measured {measured:,.0f} MiB")  # pytest -s shows it
    assert abs(predicted / measured - 1) <= 0.15, (predicted, measured)
    assert abs(summary["estimated_peak_mib"] / measured - 1) <= 0.15  # train's own estimate (longest row known)
    assert "warning: this recipe is estimated" not in trained.stderr


def test_train_warns_before_loading_when_the_estimate_exceeds_free_memory(work, tmp_path):
    folder, model = work
    path = recipe(folder, model, "4bit", 1024, False)
    big = run_cli("estimate", str(path), "--set", "train.micro_batch_size=100000")
    predicted = float(re.search(r"estimated peak\s+([\d,]+) MiB", big.stdout).group(1).replace(",", ""))
    assert predicted > 200_000  # 100,000 rows of 1,024 tokens: far beyond this machine

    # only 8 rows exist, so the real batches stay small and the run still finishes
    trained = run_cli("train", str(path), "--output", str(tmp_path / "run"), "--skip-validate",
                      "--set", "train.micro_batch_size=100000", "--set", "train.max_steps=1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    flat = " ".join(trained.stderr.split())
    assert "warning: this recipe is estimated to need" in flat and "mistral-ft estimate RECIPE" in flat
    assert flat.index("warning: this recipe is estimated") < flat.index("run folder")  # before the model loads
