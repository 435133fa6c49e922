"""The command line as a user meets it: help texts, and one clear paragraph (no traceback) for bad input."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import run_cli

ROW = {"prompt": "### Instruction\nSay hi.\n\n### Response\n", "response": "hi", "source": "t"}


def recipe(tmp_path, model, data_path, extra: str = "") -> str:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        model:
          base: {model}
        data:
          sources:
            - path: {data_path}
              format: instruct-v3
        """) + textwrap.dedent(extra))
    return str(path)


def jsonl(tmp_path, rows, name="d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    text = " ".join(result.stderr.split())  # rich wraps long lines
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.stderr}"


def test_help_lists_commands_and_train_options():
    top = run_cli("--help")
    assert top.returncode == 0 and "train" in top.stdout and "recipe" in top.stdout
    train = run_cli("train", "--help")
    assert train.returncode == 0
    for option in ("--set", "--output", "KEY=VALUE", "recipe"):
        assert option in train.stdout


def test_recipe_schema_documents_every_section():
    result = run_cli("recipe", "schema")
    assert result.returncode == 0
    for key in ("model.base", "lora.r", "data.sources[].format", "train.learning_rate", "eval.generate", "output.dir"):
        assert key in result.stdout


def test_output_closed_early_by_the_reader_is_not_an_error():
    """`mistral-ft recipe schema | head -1`: the reader leaves; no traceback, status 0."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "finetune", "recipe", "schema"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout.read(10)  # the first bytes, then the reader goes away
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_recipe_check_prints_resolved_recipe(tmp_path):
    result = run_cli("recipe", "check", recipe(tmp_path, "m", "d.jsonl"), "--set", "lora.r=4")
    assert result.returncode == 0, result.stderr
    assert "r: 4" in result.stdout and "alpha: 32.0" in result.stdout


def test_unknown_key(tmp_path):
    result = run_cli("train", recipe(tmp_path, "m", "d.jsonl", "lora:\n  rnak: 8\n"))
    assert_clean_error(result, "r.yaml line 8", "unknown key `lora.rnak`", "Did you mean `lora.rank`?")


def test_wrong_type(tmp_path):
    result = run_cli("train", recipe(tmp_path, "m", "d.jsonl", "train:\n  epochs: many\n"))
    assert_clean_error(result, "`train.epochs`", "'many'")


def test_bad_override_syntax(tmp_path):
    result = run_cli("train", recipe(tmp_path, "m", "d.jsonl"), "--set", "lora.r")
    assert_clean_error(result, "Bad override 'lora.r'", "--set section.key=value")


def test_missing_recipe_file(tmp_path):
    assert_clean_error(run_cli("train", str(tmp_path / "nope.yaml")), "Recipe file not found", "nope.yaml")


def test_model_not_found_offline(tmp_path):
    result = run_cli("train", recipe(tmp_path, "no-such-org/no-such-model", jsonl(tmp_path, [ROW])))
    assert_clean_error(result, "'no-such-org/no-such-model'", "HF_HUB_OFFLINE", "local folder")


def test_missing_local_model_folder(tmp_path):
    result = run_cli("train", recipe(tmp_path, "./models/not-built-yet", jsonl(tmp_path, [ROW])))
    assert_clean_error(result, "model.base './models/not-built-yet': no such folder", "tiny-model")


def test_missing_data_file(tmp_path, tiny_mistral):
    result = run_cli("train", recipe(tmp_path, tiny_mistral, tmp_path / "missing.jsonl"))
    assert_clean_error(result, "missing.jsonl", "data.sources[0]")
    assert not (tmp_path / "runs").exists()


def test_missing_column_lists_columns_found(tmp_path, tiny_mistral):
    data = jsonl(tmp_path, [{"question": "q", "answer": "a"}])
    result = run_cli("train", recipe(tmp_path, tiny_mistral, data))
    assert_clean_error(result, "question", "answer", "columns")


@pytest.mark.parametrize("response", ["", None, "   "])
def test_empty_or_null_response(tmp_path, tiny_mistral, response):
    data = jsonl(tmp_path, [ROW, {**ROW, "response": response}])
    result = run_cli("train", recipe(tmp_path, tiny_mistral, data))
    assert_clean_error(result, "d.jsonl", "line 2", "response")


def test_existing_output_folder_is_never_overwritten(tmp_path, tiny_mistral):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    result = run_cli("train", recipe(tmp_path, tiny_mistral, jsonl(tmp_path, [ROW])), "--output", str(out))
    assert_clean_error(result, "already exists and is not empty")
    assert (out / "summary.json").read_text() == "{}"


def test_train_refuses_a_model_that_fails_pre_training_checks(tmp_path):
    """A v0.3-vocabulary model with v0.1's window and rope theta matches no Mistral release."""
    from finetune.model.tiny import build_tiny_model

    bad = build_tiny_model(tmp_path / "bad", tokenizer="v3", sliding_window=4096, rope_theta=1e4)
    args = ["train", recipe(tmp_path, bad, jsonl(tmp_path, [ROW] * 4), "train:\n  max_steps: 1\n"),
            "--set", "data.validation_ratio=0"]
    refused = run_cli(*args, "--output", str(tmp_path / "refused"))
    assert_clean_error(refused, "pre-training check", "config.version", "--skip-validate")
    assert not (tmp_path / "refused").exists()
    forced = run_cli(*args, "--skip-validate", "--output", str(tmp_path / "forced"))
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (tmp_path / "forced" / "adapter" / "adapter_config.json").is_file()
