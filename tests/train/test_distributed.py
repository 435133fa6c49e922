"""Two real processes on gloo: the same loss curve and adapter as one process with twice the micro-batch
(DDP through configs/accelerate/ddp.yaml), one run folder written by the main process only, the effective
batch recorded, data prepared once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_cli
from tests.train.conftest import adapter_tensors, losses, max_difference, short_recipe


@pytest.fixture(scope="module")
def two_runs(tiny_mistral, tmp_path_factory):
    """(2 processes × micro-batch 4 through configs/accelerate/ddp.yaml, 1 process × micro-batch 8)."""
    folder = tmp_path_factory.mktemp("ddp")
    recipe = str(short_recipe(folder, tiny_mistral, max_steps=10))
    two = run_cli("train", recipe, "--nproc", "2", "--accelerate-config", "configs/accelerate/ddp.yaml",
                  "--set", "train.micro_batch_size=4", "--set", "train.save_steps=5", "--skip-validate")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli("train", recipe, "--set", "train.micro_batch_size=8", "--output", str(folder / "one"),
                  "--skip-validate")
    assert one.returncode == 0, one.stderr[-3000:]
    (run2,) = [p for p in (folder / "runs").iterdir() if p.name != ".data-cache"]  # one run, made by the main process
    return run2, folder / "one", two.stderr


@pytest.fixture(scope="module")
def fsdp_run(two_runs, tmp_path_factory):
    """The same recipe under configs/accelerate/fsdp.yaml, 2 × micro-batch 4."""
    run2, _, _ = two_runs
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = run_cli("train", str(run2 / "recipe.yaml"), "--nproc", "2", "--accelerate-config",
                     "configs/accelerate/fsdp.yaml", "--output", str(out), "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


def test_two_processes_follow_the_one_process_loss_curve(two_runs):
    run2, run1, _ = two_runs
    curve2, curve1 = losses(run2), losses(run1)
    assert sorted(curve2) == sorted(curve1) == list(range(1, 11))  # each step logged once, not once per process
    for step in curve1:
        assert curve2[step] == pytest.approx(curve1[step], rel=1e-4), step  # measured: 1e-7
    assert curve1[10] < curve1[1]  # and it trained


def test_two_process_adapter_loads_and_matches(two_runs, tiny_mistral):
    run2, run1, _ = two_runs
    a, b = adapter_tensors(run2), adapter_tensors(run1)
    scale = max(float(t.abs().max()) for t in b.values())
    assert max_difference(a, b) <= 1e-3 * scale  # measured: 7.5e-7 against weights up to 0.09
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run2 / "adapter").eval()
    ids = torch.tensor([[1, 733, 16289, 28793, 22557, 733, 28748, 16289, 28793]])
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the loaded adapter changes the model


def test_fsdp_config_on_a_cpu_machine_says_it_runs_ddp(fsdp_run, two_runs):
    """accelerate enables FSDP only on GPUs: on this CPU the FSDP config gives DDP over gloo, and the
    run says so instead of letting the user believe the model is sharded."""
    out, stderr = fsdp_run
    assert "asks for FSDP, but accelerate runs MULTI_CPU here" in " ".join(stderr.split())
    assert json.loads((out / "summary.json").read_text())["parallelism"] == "MULTI_CPU"
    _, run1, _ = two_runs
    assert max_difference(adapter_tensors(out), adapter_tensors(run1)) <= 1e-5


def test_two_processes_resume_from_a_checkpoint_to_the_same_adapter(two_runs, tmp_path):
    """Each process restores its own RNG state; the optimizer state loads on CPU (transformers would map
    it to "cpu:0" and fail)."""
    run2, _, _ = two_runs
    run = tmp_path / "run"
    shutil.copytree(run2, run)
    shutil.rmtree(run / "adapter")
    shutil.rmtree(run / "checkpoints" / "checkpoint-10")
    assert sorted(p.name for p in (run / "checkpoints" / "checkpoint-5").glob("rng_state*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    result = run_cli("train", str(run / "recipe.yaml"), "--nproc", "2", "--resume", "--output", str(run),
                     "--skip-validate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(adapter_tensors(run), adapter_tensors(run2)) <= 1e-6
    assert losses(run) == pytest.approx(losses(run2), rel=1e-6)


def test_effective_batch_is_printed_and_recorded(two_runs):
    run2, run1, stderr = two_runs
    s2 = json.loads((run2 / "summary.json").read_text())
    s1 = json.loads((run1 / "summary.json").read_text())
    assert (s2["processes"], s2["micro_batch_size"], s2["effective_batch_size"]) == (2, 4, 8)
    assert (s1["processes"], s1["micro_batch_size"], s1["effective_batch_size"]) == (1, 8, 8)
    assert (s2["parallelism"], s1["parallelism"]) == ("MULTI_CPU", "single process")  # DDP on gloo
    assert "4 rows × 1 accumulation × 2 process(es) = 8 rows per optimiser step" in stderr
    assert stderr.count("run folder") == 1  # the other process prints nothing


def test_nproc_with_a_bad_recipe_fails_before_launching(tmp_path, tiny_mistral):
    recipe = short_recipe(tmp_path, tiny_mistral)
    result = run_cli("train", str(recipe), "--nproc", "2", "--set", "train.micro_batch_sise=4")
    assert result.returncode == 2
    assert "micro_batch_sise" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


SHARE = """
import json, os, sys
from finetune.errors import FinetuneError
from finetune.train import distributed

def prepare():
    open(os.path.join(sys.argv[1], "prepared-by-" + os.environ["RANK"]), "w").close()
    return {"rows": list(range(5)), "by": os.environ["RANK"]}

def fail():
    raise FinetuneError("data.sources[0] bad.jsonl line 3: the response is empty.")

shared = distributed.main_computes(prepare)
try:
    distributed.main_computes(fail)
except FinetuneError as error:
    with open(os.path.join(sys.argv[1], "result-" + os.environ["RANK"] + ".json"), "w") as out:  # one file each:
        json.dump({"rank": os.environ["RANK"], "shared": shared, "error": str(error),  # stdout lines interleave
                   "everywhere": getattr(error, "raised_everywhere", False)}, out)
distributed.shutdown()
"""


def test_main_process_prepares_and_the_others_receive_the_result_or_its_error(tmp_path):
    from finetune.train.launch import launch_arguments

    script = tmp_path / "share.py"
    script.write_text(SHARE)
    args = launch_arguments(2, [])
    args = args[: args.index("-m")] + [str(script), str(tmp_path)]  # the same launch, of our script
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("result-*.json"))]
    assert [r["rank"] for r in rows] == ["0", "1"]
    assert all(r["shared"] == {"rows": [0, 1, 2, 3, 4], "by": "0"} for r in rows)
    assert sorted(p.name for p in tmp_path.glob("prepared-by-*")) == ["prepared-by-0"]  # prepared once
    assert all(r["everywhere"] and "line 3: the response is empty" in r["error"] for r in rows)


def test_a_bad_data_row_under_two_processes_is_reported_once(tmp_path, tiny_mistral):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Is a cat an animal?", "response": "animal"}\n{"prompt": "Is a car an animal?", "response": ""}\n')
    recipe = short_recipe(tmp_path, tiny_mistral)
    result = run_cli("train", str(recipe), "--nproc", "2", "--set", f"data.sources=[{{path: {bad}, format: instruct-v3}}]")
    assert result.returncode != 0
    flat = " ".join(result.stderr.split())
    assert flat.count("bad.jsonl") == 1 and "line 2" in flat, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_accelerate_config_or_a_bad_process_count_is_one_clear_error(tmp_path, tiny_mistral):
    recipe = str(short_recipe(tmp_path, tiny_mistral))
    missing = run_cli("train", recipe, "--nproc", "2", "--accelerate-config", "configs/accelerate/nope.yaml")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--accelerate-config configs/accelerate/nope.yaml: no such file" in " ".join(missing.stderr.split())
    zero = run_cli("train", recipe, "--nproc", "0")
    assert zero.returncode == 2 and "expected a whole number of at least 1, got '0'" in zero.stderr
    assert not (tmp_path / "runs").exists()
