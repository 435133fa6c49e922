"""`mistral-ft validate`: table and exit 0 on a good model, JSON, exit 1 with failing rows first,
exit 2 for a bad target (missing folder, Hub id offline, adapter folder, not a Mistral)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from validate_helpers import W, edit_config

from finetune.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_python_m_finetune_validate_prints_the_table(tiny_mistral):
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "finetune", "validate", str(tiny_mistral), "--backend", "sdpa"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "attention.window[sdpa]" in out.stdout and "parity[sdpa]" in out.stdout
    assert "all 16 checks passed" in out.stdout
    assert "FAIL" not in out.stdout


def test_json_parses(tiny_mistral, capsys):
    assert main(["validate", str(tiny_mistral), "--json", "--backend", "eager"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and doc["failed"] == []
    assert doc["target"]["sliding_window"] == W and doc["target"]["kind"] == "model folder"
    rows = {r["name"]: r for r in doc["checks"]}
    assert rows["attention.window[eager]"]["value"] == str(W)
    assert isinstance(rows["parity[eager]"]["value"], float)
    assert set(rows["cache.slots"]) == {"name", "passed", "value", "tolerance", "detail"}


def test_broken_model_exits_1_with_failing_rows_first(tiny_mistral, tmp_path, capsys):
    broken = edit_config(tiny_mistral, tmp_path / "theta-1e6-with-window", rope_theta=1e6)
    assert main(["validate", str(broken), "--backend", "sdpa"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "PASS" in line or "FAIL" in line]
    assert "FAIL" in lines[0] and "config.version" in lines[0]
    assert len(lines) == 16 and all("PASS" in line for line in lines[1:])
    assert "1 of 16 checks failed: config.version" in out


def test_broken_model_json(tiny_mistral, tmp_path, capsys):
    broken = edit_config(tiny_mistral, tmp_path / "no-window-theta-1e4", sliding_window=None)
    assert main(["validate", str(broken), "--json", "--backend", "sdpa", "--quick"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is False and doc["failed"] == ["config.version"]


def test_bad_targets_exit_2(tiny_mistral, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "No such folder" in capsys.readouterr().err

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert main(["validate", str(tmp_path / "adapter")]) == 2
    assert "PEFT adapter" in capsys.readouterr().err

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["validate", str(llama)]) == 2
    assert "'llama' model" in capsys.readouterr().err

    assert main(["validate", str(tiny_mistral), "--backend", "no-such-backend"]) == 2
    assert "Unknown attention backend" in capsys.readouterr().err

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["validate", "mistralai/not-a-real-model-id"]) == 2
    err = capsys.readouterr().err
    assert "not-a-real-model-id" in err and "HF_HUB_OFFLINE" in err
