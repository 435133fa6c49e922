"""``mistral-ft preprocess`` on real files: the report, the histogram, --show's visible masking, bad rows,
and ``train`` reusing the cache and writing data_lengths.png and rejected.jsonl into its run folder."""

from __future__ import annotations

import json

import yaml

from tests.conftest import run_cli


def write_recipe(tmp_path, base, on_bad_row: str) -> str:
    rows = [json.dumps({"prompt": f"Is {n} even?", "response": "yes" if n % 2 == 0 else "no"}) for n in range(30)]
    rows[4] = '{"prompt": "Is 4 even?", "response": '  # line 5: not valid JSON
    rows[9] = json.dumps({"prompt": "Is 9 even?", "response": None})  # line 10: null
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    recipe = {
        "model": {"base": str(base), "quantization": "none"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"sources": [{"path": str(tmp_path / "rows.jsonl"), "format": "instruct-v3"}],
                 "max_length": 64, "validation_ratio": 0, "on_bad_row": on_bad_row},
        "train": {"max_steps": 2, "micro_batch_size": 4},
        "eval": {"loss": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "pre"},
    }
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_bad_rows_stop_preprocess_with_every_one_listed(tmp_path, tiny_mistral):
    result = run_cli("preprocess", write_recipe(tmp_path, tiny_mistral, "error"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert "2 bad rows (data.on_bad_row: error)" in text
    assert "rows.jsonl line 5: not valid JSON" in text and "rows.jsonl line 10, column 'response'" in text


def test_preprocess_reports_shows_and_train_reuses_the_cache(tmp_path, tiny_mistral):
    recipe = write_recipe(tmp_path, tiny_mistral, "skip")
    first = run_cli("preprocess", recipe, "--show", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    err = " ".join(first.stderr.split())
    assert "read 30, kept 28, dropped 2 (2 bad row)" in err
    assert "cache: written" in err and "tokens per row: min" in err and "steps per epoch: 7 (28 rows / 4 rows per step)" in err
    assert "2 rows not trained on, each with its reason" in err
    (cache,) = (tmp_path / "runs" / ".data-cache").iterdir()
    assert (cache / "data_lengths.png").read_bytes()[:4] == b"\x89PNG"
    rejected = [json.loads(line) for line in (cache / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"].rsplit(" ", 1)[-1] for r in rejected] == ["5", "10"]
    shown = first.stdout + first.stderr
    assert shown.count("<s>") >= 2 and "[INST]" in shown
    assert "« yes</s>»" in shown or "« no</s>»" in shown  # the answer and EOS carry loss, nothing else

    again = run_cli("preprocess", recipe)
    assert "cache: reused" in " ".join(again.stderr.split())

    trained = run_cli("train", recipe, "--output", str(tmp_path / "run"), "--skip-validate")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "cache: reused" in " ".join(trained.stderr.split())
    run = tmp_path / "run"
    assert (run / "data_lengths.png").is_file()
    assert len((run / "rejected.jsonl").read_text().splitlines()) == 2
    lengths = json.loads((run / "summary.json").read_text())["lengths"]
    assert lengths["rows"] == 28 and lengths["steps_per_epoch"] == 7
