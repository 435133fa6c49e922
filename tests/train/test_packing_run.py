"""data.packing end to end: the trainer gets packed sequences (fewer steps per epoch) and learns."""

from __future__ import annotations

import json

from tests.conftest import REPO, run_cli
from tests.train.conftest import losses, short_recipe


def test_a_packed_run_takes_fewer_steps_and_learns(tmp_path, tiny_mistral):
    recipe = short_recipe(tmp_path, tiny_mistral, max_steps=-1, epochs=1, logging_steps=2)
    source = f"[{{path: {REPO / 'data/quickstart/train.jsonl'}, format: instruct-v3, max_rows: 300}}]"
    result = run_cli("train", str(recipe), "--set", "data.packing=true", "--set", f"data.sources={source}",
                     "--output", str(tmp_path / "run"), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    lengths = summary["lengths"]
    assert lengths["packed_into"] < lengths["rows"] / 2  # ~40-token rows, 128-token sequences
    assert summary["steps"] == lengths["steps_per_epoch"] == -(-lengths["packed_into"] // 4)
    curve = losses(tmp_path / "run")
    assert curve[max(curve)] < curve[min(curve)] - 1.0
    assert summary["tokens_per_second"] > 0
    assert f"packing: {lengths['rows']} rows in {lengths['packed_into']} sequences" in " ".join(result.stderr.split())
