"""A short SFT recipe on the tiny model for the multi-process and resume tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import REPO


def short_recipe(folder: Path, base: Path, **train) -> Path:
    """The quickstart's data and 4-bit tiny model, LoRA only (small checkpoints), no held-out evaluation."""
    recipe = {
        "model": {"base": str(base), "quantization": "4bit"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {
            "sources": [{"path": str(REPO / "data/quickstart/train.jsonl"), "format": "instruct-v3"}],
            "max_length": 128,
        },
        "train": {"learning_rate": 2e-3, "warmup_ratio": 0.1, "micro_batch_size": 4, "logging_steps": 1,
                  "max_steps": 16, "seed": 7, **train},
        "eval": {"loss": False, "generate": False},
        "output": {"dir": str(folder / "runs"), "name": "short"},
    }
    path = folder / "short.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def losses(run: Path) -> dict[int, float]:
    """Training loss by step, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def adapter_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
