"""`mistral-ft push`: the real CLI and the real huggingface_hub client against a local stand-in Hub
(tests/lifecycle/hub_server.py, reached through HF_ENDPOINT).

Uploads go through Git LFS (HF_HUB_DISABLE_XET=1): the stand-in offers no Xet storage, and one test
checks that a client left on Xet gets a clear error naming that switch.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from hub_server import HubStandIn

from finetune.lifecycle.model_card import render_model_card, resolve_license
from finetune.recipe.load import load_recipe
from tests.conftest import run_cli

TOKEN = "hf_StandInWriteToken_7Qx2Lm9Zp4"  # distinctive, so any leak is found by a substring search
READ_TOKEN = "hf_StandInReadOnly_3Vb8Kd1Wn6"
HUB_BASE = "mistralai/Mistral-7B-v0.1"
HUB_DATA = "mosaicml/instruct-v3"


@pytest.fixture
def hub():
    server = HubStandIn({TOKEN: "write", READ_TOKEN: "read"})
    yield server
    server.close()


@pytest.fixture
def run_copy(quickstart_run, tmp_path) -> Path:
    """A private copy of the trained quickstart run, safe to modify."""
    src, _ = quickstart_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "merged"))
    return dst


def push(hub: HubStandIn, tmp_path: Path, *args: str, **env: str):
    """`python -m finetune push ARGS` against the stand-in, with a fresh HF home and short retry delays."""
    home = tmp_path / "hf-home"
    full_env = {
        "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home), "HF_TOKEN_PATH": str(home / "token"), "HUGGING_FACE_HUB_TOKEN": "",
        "MISTRAL_FT_PUSH_RETRY_DELAY": "0.01", **env,
    }
    return run_cli("push", *args, env=full_env, timeout=180)


def front_matter(card: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S)
    assert match, card[:300]
    return yaml.safe_load(match.group(1)), match.group(2)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def as_if_trained_on_hub_sources(run: Path) -> None:
    """Point the copy's recipe at a Hub base and a Hub data set, as a real run's recipe would."""
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"]["base"] = HUB_BASE
    recipe["data"]["sources"][0]["path"] = HUB_DATA
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def assert_clean_failure(result, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    text = " ".join(result.stderr.split())
    for phrase in phrases:
        assert phrase in text, text


def test_push_adapter_sends_files_card_private_flag_and_branch(hub, run_copy, tmp_path):
    as_if_trained_on_hub_sources(run_copy)
    before = snapshot(run_copy)

    result = push(hub, tmp_path, str(run_copy), "--repo", "qs-adapter", "--private", "--revision", "exp")

    assert result.returncode == 0, result.stderr[-3000:]
    repo = "test-user/qs-adapter"  # a bare name lands in the token owner's namespace
    assert f"{hub.url}/{repo}/tree/exp" in result.stdout
    assert hub.repos[repo].private is True
    files = hub.files(repo, "exp")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        src = run_copy / ("tokenizer" if name.startswith("tokenizer") else "adapter") / name
        assert files[name] == src.read_bytes(), name
        assert f"  {name}" in result.stdout
    assert set(hub.files(repo, "main")) == {".gitattributes"}  # the branch got the commit, main did not
    assert [c["revision"] for c in hub.repos[repo].commits] == ["exp"]
    assert hub.requests_to("/lfs-objects/"), "the safetensors file went through the LFS upload"

    meta, body = front_matter(files["README.md"].decode())
    assert meta["base_model"] == HUB_BASE
    assert meta["library_name"] == "peft"
    assert meta["license"] == "apache-2.0"
    assert {"mistral-ft", "qlora", "sft"} <= set(meta["tags"])
    assert meta["datasets"] == [HUB_DATA]
    summary = json.loads((run_copy / "summary.json").read_text())
    assert HUB_BASE in body and "r / alpha / dropout | 16 / 32.0 / 0.0" in body
    assert f"| loss | {summary['eval_loss_before']:.4f} | {summary['eval_loss_after']:.4f} |" in body
    assert f"| {summary['exact_match_before']:.1%} | {summary['exact_match_after']:.1%} |" in body
    assert f"Training time: {summary['train_seconds']:.0f} s" in body
    assert f"```yaml\n{(run_copy / 'recipe.yaml').read_text().rstrip()}\n```" in body
    assert f'PeftModel.from_pretrained(base, "{repo}", revision="exp")' in body
    assert "data/quickstart/eval.jsonl` (not uploaded)" in body

    # The token reached the Hub in the Authorization header of every API call, and nowhere else.
    api_calls = [r for r in hub.requests if r.path.startswith("/api/") and "agent-harnesses" not in r.path]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in api_calls)
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN.encode() not in files["README.md"]
    assert snapshot(run_copy) == before  # push writes nothing into the run folder
    assert not any(TOKEN.encode() in p.read_bytes() for p in run_copy.rglob("*") if p.is_file())
    assert not hub.requests_to("xet"), "the Xet path must not be taken"


def test_push_merged_uploads_the_full_model_and_its_shards(hub, run_copy, tiny_mistral, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run_copy / "merged"  # what `mistral-ft merge RUN` writes: a sharded full model + tokenizer
    AutoModelForCausalLM.from_pretrained(tiny_mistral).save_pretrained(merged, max_shard_size="20MB")
    AutoTokenizer.from_pretrained(run_copy / "tokenizer").save_pretrained(merged)
    shards = sorted(p.name for p in merged.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (merged / "model.safetensors.index.json").is_file()

    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/qs-merged", "--merged")

    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("test-user/qs-merged")
    assert hub.repos["test-user/qs-merged"].private is False
    for path in merged.iterdir():
        assert files[path.name] == path.read_bytes(), path.name
    assert not any(name.startswith("adapter") for name in files)
    meta, body = front_matter(files["README.md"].decode())
    assert meta["library_name"] == "transformers" and "merged" in meta["tags"]
    assert "base_model" not in meta  # the quickstart's base is a local folder, not a Hub id
    assert str(tiny_mistral) in body
    assert 'AutoModelForCausalLM.from_pretrained("test-user/qs-merged", dtype="auto"' in body
    assert "PeftModel" not in body


def test_merged_push_without_a_merged_folder_says_to_merge_first(hub, run_copy, tmp_path):
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", "--merged")
    assert_clean_failure(result, "does not hold a merged model", f"mistral-ft merge {run_copy}")
    assert hub.requests == []


def test_transient_failures_are_retried_and_the_push_completes(hub, run_copy, tmp_path):
    hub.fail("/api/repos/create", 1, status=502)
    hub.fail("/preupload/", 1, status=503)  # retried by huggingface_hub itself
    hub.fail("/commit/", 1, status=503)
    hub.fail("/commit/", 1, status=None)  # connection dropped without an answer

    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/flaky")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Hub answered 502; retrying in 0.01 s (attempt 2/5)" in result.stderr
    assert "Hub answered 503; retrying in 0.01 s (attempt 2/5)" in result.stderr
    assert "connection failed (RemoteProtocolError" in result.stderr and "(attempt 3/5)" in result.stderr
    assert len(hub.requests_to("/commit/")) == 3 and len(hub.requests_to("/preupload/")) == 2
    assert len(hub.repos["test-user/flaky"].commits) == 1
    assert {"adapter_model.safetensors", "README.md"} <= set(hub.files("test-user/flaky"))


def test_a_hub_that_keeps_failing_ends_in_a_clear_error(hub, run_copy, tmp_path):
    hub.fail("/commit/", 99, status=503)
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/down")
    assert_clean_failure(result, "kept failing while committing", "Hub answered 503 (5 attempts)", "No commit was made")
    assert result.stderr.count("retrying in") == 4
    assert len(hub.requests_to("/commit/")) == 5
    assert set(hub.files("test-user/down")) == {".gitattributes"}


@pytest.mark.parametrize("token,status", [(READ_TOKEN, 403), ("hf_NotAKnownToken_5Tg7", 401)])
def test_a_token_without_write_access_is_told_so(hub, run_copy, tmp_path, token, status):
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_TOKEN=token)
    assert_clean_failure(result, f"refused creating the repository ({status})", "token lacks write access")
    assert token not in result.stdout + result.stderr
    assert hub.repos == {}


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad--name", "has space"])
def test_a_bad_repo_id_is_refused_before_any_request(hub, run_copy, tmp_path, repo_id):
    result = push(hub, tmp_path, str(run_copy), "--repo", repo_id)
    assert_clean_failure(result, f"--repo '{repo_id}' is not a valid Hugging Face repository id")
    assert hub.requests == []


def test_no_token_is_explained_and_a_stored_login_is_used(hub, run_copy, tmp_path):
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_TOKEN="")
    assert_clean_failure(result, "No Hugging Face token found", "hf auth login", "HF_TOKEN")
    assert hub.requests == []

    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(TOKEN)  # what `hf auth login` stores
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_TOKEN="")
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.requests_to("/commit/")[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_offline_mode_is_refused_before_any_request(hub, run_copy, tmp_path):
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_HUB_OFFLINE="1")
    assert_clean_failure(result, "HF_HUB_OFFLINE is set", "nothing was pushed")
    assert hub.requests == []


def test_an_unreachable_hub_is_reported_after_the_retries(hub, run_copy, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_ENDPOINT=closed)
    assert_clean_failure(result, f"Could not reach the Hugging Face Hub at {closed} while creating the repository",
                         "(5 attempts)")
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 4 and all(line.startswith("connection failed (ConnectError") for line in retries)


def test_missing_or_unfinished_run_folders_are_explained(hub, run_copy, tmp_path):
    result = push(hub, tmp_path, str(tmp_path / "nope"), "--repo", "test-user/x")
    assert_clean_failure(result, f"No such run folder: {tmp_path / 'nope'}")
    (run_copy / "summary.json").unlink()
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x")
    assert_clean_failure(result, "is not a finished mistral-ft run folder: summary.json missing")
    assert hub.requests == []


def test_a_hub_without_xet_storage_names_the_lfs_switch(hub, run_copy, tmp_path):
    pytest.importorskip("hf_xet")
    result = push(hub, tmp_path, str(run_copy), "--repo", "test-user/x", HF_HUB_DISABLE_XET="0")
    assert_clean_failure(result, "Xet storage failed while uploading the files", "HF_HUB_DISABLE_XET=1")
    assert TOKEN not in result.stderr


def test_card_of_a_local_base_has_no_base_model_key_and_licence_comes_from_the_base_card(run_copy, tmp_path):
    base = tmp_path / "my-base"
    base.mkdir()
    recipe = load_recipe(run_copy / "recipe.yaml")
    assert resolve_license(recipe, None)[0] == "apache-2.0"  # the tiny base has no card: the default
    assert resolve_license(recipe, "mit") == ("mit", "--license")
    (base / "README.md").write_text("---\nlicense: llama3.1\n---\n# my base\n")
    recipe.model.base = str(base)
    assert resolve_license(recipe, None) == ("llama3.1", f"the card of {base}")

    meta, body = front_matter(render_model_card(run_copy, recipe, "me/card", merged=False, license="llama3.1"))
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["license"] == "llama3.1" and meta["library_name"] == "peft"
    assert f"`{base}` (a local folder)" in body
    assert 'PeftModel.from_pretrained(base, "me/card")' in body  # main: no revision argument
