"""Runs that survive being killed: SIGKILL mid-training then --resume ends with the adapter of an
uninterrupted run; a corrupted latest checkpoint is named and the previous one used; Ctrl-C writes a
checkpoint before exiting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.train.checkpoints import problem
from tests.conftest import REPO, run_cli
from tests.train.conftest import adapter_tensors, losses, max_difference, short_recipe

STEPS, EVERY = 40, 10


@pytest.fixture(scope="module")
def setup(tiny_mistral, tmp_path_factory):
    """The recipe, and the run that was never interrupted (the reference for every resumed run)."""
    folder = tmp_path_factory.mktemp("resume")
    recipe = short_recipe(folder, tiny_mistral, max_steps=STEPS, save_steps=EVERY, save_total_limit=3)
    result = run_cli("train", str(recipe), "--output", str(folder / "whole"), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    kept = sorted(p.name for p in (folder / "whole" / "checkpoints").iterdir() if p.name != "README.md")
    assert kept == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]  # save_total_limit 3, no .staging left
    return folder, recipe, folder / "whole"


def start_training(recipe: Path, output: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", "train", str(recipe), "--output", str(output), "--skip-validate"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "training ended before the test could interrupt it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def killed(setup):
    """A run SIGKILLed once its second checkpoint (step 20 of 40) is published."""
    folder, recipe, _ = setup
    run = folder / "killed"
    process = start_training(recipe, run)
    wait_for(lambda: (run / "checkpoints" / f"checkpoint-{2 * EVERY}").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "adapter").exists()
    return run


def test_killed_run_resumes_to_the_uninterrupted_adapter(setup, killed, tmp_path):
    _, recipe, whole = setup
    run = tmp_path / "killed"
    shutil.copytree(killed, run)
    result = run_cli("train", str(recipe), "--resume", "latest", "--output", str(run), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run} from checkpoint-{2 * EVERY}" in flat(result.stderr)
    assert max_difference(adapter_tensors(run), adapter_tensors(whole)) <= 1e-5
    assert losses(run) == pytest.approx(losses(whole), rel=1e-4)  # one row per step, none doubled
    assert json.loads((run / "summary.json").read_text())["status"] == "done"


def test_corrupt_latest_checkpoint_is_named_and_the_previous_used(setup, killed, tmp_path):
    _, recipe, whole = setup
    run = tmp_path / "killed"
    shutil.copytree(killed, run)
    damaged = run / "checkpoints" / f"checkpoint-{2 * EVERY}"
    optimizer = damaged / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a half-written file
    result = run_cli("train", str(recipe), "--resume", "--output", str(run), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping {damaged}: optimizer.pt has" in flat(result.stderr)
    assert f"from checkpoint-{EVERY}" in flat(result.stderr)
    assert max_difference(adapter_tensors(run), adapter_tensors(whole)) <= 1e-5


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(setup, tmp_path):
    _, recipe, whole = setup
    run = tmp_path / "stopped"
    process = start_training(recipe, run)
    wait_for(lambda: len(losses_so_far(run)) >= 3, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "--resume latest --output" in flat(stderr) and "Traceback" not in stderr
    (checkpoint,) = (run / "checkpoints").glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 3 <= step < STEPS and step % EVERY != 0  # written because of Ctrl-C, not by the schedule
    assert problem(checkpoint) is None
    assert json.loads((run / "summary.json").read_text())["status"] == f"interrupted at step {step}"
    result = run_cli("train", str(recipe), "--resume", str(checkpoint), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(adapter_tensors(run), adapter_tensors(whole)) <= 1e-5


def test_resume_refuses_a_changed_recipe(setup, killed):
    _, recipe, _ = setup
    result = run_cli("train", str(recipe), "--resume", "--output", str(killed), "--set", "train.learning_rate=0.1")
    assert result.returncode == 2
    assert "train.learning_rate" in result.stderr and "Traceback" not in result.stderr


def flat(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


def losses_so_far(run: Path) -> dict:
    return losses(run) if (run / "metrics.jsonl").is_file() else {}


def test_resume_refuses_changed_data_or_another_process_count(setup, killed, tmp_path):
    _, recipe, _ = setup
    run = tmp_path / "killed"
    shutil.copytree(killed, run)
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["data_fingerprint"]) == 24  # the data cache key the run started with
    summary["data_fingerprint"] = "0" * 24  # as if the data had been edited since
    (run / "summary.json").write_text(json.dumps(summary))
    result = run_cli("train", str(recipe), "--resume", "--output", str(run), "--skip-validate")
    assert result.returncode == 2 and "the data changed since the run started" in flat(result.stderr)

    other = tmp_path / "other"
    shutil.copytree(killed, other)
    result = run_cli("train", str(recipe), "--resume", "--output", str(other), "--nproc", "2", "--skip-validate")
    assert result.returncode == 2 and "it trained with 1 process(es), this resume has 2" in flat(result.stderr)
