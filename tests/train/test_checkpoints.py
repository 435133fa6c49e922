"""Checkpoint manifests and the choice of the newest good checkpoint, on real files."""

from __future__ import annotations

import json

import pytest
import yaml

from finetune.errors import FinetuneError
from finetune.recipe.load import load_recipe
from finetune.train.checkpoints import MANIFEST, newest_good, problem, write_manifest
from finetune.train.resume import find_resume_point


def make_checkpoint(root, step: int, complete: bool = True):
    folder = root / "checkpoints" / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(bytes(range(256)) * 40)
    (folder / "sub" / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        write_manifest(folder)
    return folder


def test_a_complete_checkpoint_passes(tmp_path):
    folder = make_checkpoint(tmp_path, 5)
    assert problem(folder) is None
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {"optimizer.pt", "sub/adapter_model.safetensors", "trainer_state.json"}


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "optimizer.pt").write_bytes(b"short"), "optimizer.pt has 5 bytes, 10,240 were written"),
        (lambda f: (f / "optimizer.pt").write_bytes(bytes(reversed(range(256))) * 40), "does not match its checksum"),
        (lambda f: (f / "sub" / "adapter_model.safetensors").unlink(), "sub/adapter_model.safetensors is missing"),
        (lambda f: (f / MANIFEST).unlink(), "no checkpoint.json"),
        (lambda f: (f / MANIFEST).write_text("{not json"), "unreadable"),
    ],
)
def test_damage_is_detected_and_described(tmp_path, damage, reason):
    folder = make_checkpoint(tmp_path, 5)
    damage(folder)
    assert reason in problem(folder)


def test_newest_good_passes_over_damaged_newer_ones(tmp_path):
    make_checkpoint(tmp_path, 5)
    good = make_checkpoint(tmp_path, 10)
    bad = make_checkpoint(tmp_path, 100)  # numeric order, not name order (100 sorts before 20 as text)
    unfinished = make_checkpoint(tmp_path, 200, complete=False)
    (bad / "optimizer.pt").write_bytes(b"")
    choice = newest_good(tmp_path / "checkpoints")
    assert choice.checkpoint == good
    assert [p for p, _ in choice.skipped] == [unfinished, bad]


def write_run(root, recipe_file):
    recipe = load_recipe(recipe_file)
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return recipe


def test_resume_finds_the_run_and_refuses_other_settings(tmp_path, repo_recipe):
    run = tmp_path / "run"
    recipe = write_run(run, repo_recipe)
    make_checkpoint(run, 10)
    point = find_resume_point("latest", recipe, str(run))
    assert (point.run_dir, point.checkpoint.name) == (run, "checkpoint-10")
    longer = load_recipe(repo_recipe, ["train.max_steps=500", "train.save_steps=50"])
    assert find_resume_point(str(run), longer, None).checkpoint.name == "checkpoint-10"  # may change
    other = load_recipe(repo_recipe, ["lora.r=64", "data.max_length=64"])
    with pytest.raises(FinetuneError, match=r"data.max_length: 128 in the run, 64 now; lora.r: 16 in the run, 64 now"):
        find_resume_point("latest", other, str(run))


def test_resume_without_a_usable_checkpoint_says_why(tmp_path, repo_recipe):
    run = tmp_path / "run"
    recipe = write_run(run, repo_recipe)
    with pytest.raises(FinetuneError, match="has no usable checkpoint.*train.save_steps"):
        find_resume_point("latest", recipe, str(run))
    broken = make_checkpoint(run, 10)
    (broken / "trainer_state.json").write_text(json.dumps({"global_step": 99}))
    with pytest.raises(FinetuneError, match="checkpoint-10: trainer_state.json does not match its checksum"):
        find_resume_point("latest", recipe, str(run))
    with pytest.raises(FinetuneError, match="this checkpoint cannot be used"):
        find_resume_point(str(broken), recipe, None)
    with pytest.raises(FinetuneError, match="no such run or checkpoint folder"):
        find_resume_point(str(tmp_path / "nowhere"), recipe, None)


@pytest.fixture
def repo_recipe():
    from tests.conftest import REPO

    return REPO / "recipes" / "quickstart.yaml"


def test_latest_is_the_newest_run_of_this_recipe_not_of_a_longer_name(tmp_path, repo_recipe):
    recipe = load_recipe(repo_recipe, [f"output.dir={tmp_path}"])
    ours = tmp_path / "quickstart-20261123-101500"
    write_run(ours, repo_recipe)
    make_checkpoint(ours, 10)
    other = tmp_path / "quickstart-dpo-20261123-111500"  # newer, another recipe
    write_run(other, repo_recipe)
    make_checkpoint(other, 10)
    point = find_resume_point("latest", recipe, None)
    assert point.run_dir == ours


def test_a_metrics_line_cut_short_by_a_kill_is_ignored(tmp_path):
    from finetune.train.run_dir import keep_metrics_until, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    keep_metrics_until(tmp_path, 1)
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
