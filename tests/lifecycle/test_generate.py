"""``mistral-ft generate`` and the target resolution behind it: the trained run answers held-out
prompts, the base model does not, answers stream and sampling is seeded, bad targets are one
clear paragraph."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from finetune.errors import FinetuneError
from finetune.lifecycle.generate import Sampling, read_prompt, seed_everything, stream_answer
from finetune.lifecycle.target import load_for_inference
from tests.conftest import REPO, run_cli

GREEDY = ["--temperature", "0", "--max-tokens", "8"]


def held_out(n: int) -> list[tuple[str, str]]:
    """The first ``n`` held-out quickstart rows as (instruction exactly as trained, reference answer)."""
    rows = [json.loads(line) for line in (REPO / "data/quickstart/eval.jsonl").read_text().splitlines()[:n]]
    return [(r["prompt"].split("### Instruction\n")[1].split("\n\n### Response")[0], r["response"]) for r in rows]


def prompt_ids(target, text: str) -> list[int]:
    return target.template.encode_prompt([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def run_target(quickstart_run):
    return load_for_inference(str(quickstart_run[0]))


def test_generate_on_the_run_answers_a_held_out_prompt_read_from_stdin(quickstart_run):
    run, _ = quickstart_run
    instruction, reference = held_out(4)[3]
    assert "\n" in instruction  # the multi-line instruction, exactly as trained
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "generate", str(run), "--prompt", "-", *GREEDY],
        input=instruction + "\n", cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{reference}\n"  # the answer alone on stdout; what was loaded goes to stderr
    assert "adapter" in result.stderr and "4bit" in result.stderr  # the run's base, quantized as the recipe says


def test_prompt_flag_takes_text_or_stdin_and_refuses_empty():
    assert read_prompt("Is a fig a fruit?") == "Is a fig a fruit?"
    assert read_prompt("-", io.StringIO("line one\n\nline two\n")) == "line one\n\nline two"
    with pytest.raises(FinetuneError, match="standard input was empty"):
        read_prompt("-", io.StringIO("\n"))


@pytest.mark.parametrize("flags, message", [
    ({"max_tokens": 0}, "--max-tokens 0"), ({"temperature": -1}, "--temperature -1"), ({"top_p": 1.5}, "(0, 1]"),
])
def test_sampling_flags_out_of_range_are_user_errors(flags, message):
    with pytest.raises(FinetuneError, match=re.escape(message)):
        Sampling(**flags).check()


def test_the_run_knows_the_held_out_tasks_and_its_base_model_does_not(run_target, tiny_mistral):
    base = load_for_inference(str(tiny_mistral))
    assert base.template.name == run_target.template.name == "mistral-v1"
    greedy = Sampling(max_tokens=8, temperature=0)
    rows = held_out(6)
    tuned = [stream_answer(run_target, prompt_ids(run_target, q), greedy, lambda _: None).text for q, _ in rows]
    untuned = [stream_answer(base, prompt_ids(base, q), greedy, lambda _: None).text for q, _ in rows]
    references = [a for _, a in rows]
    assert tuned == references
    assert not any(answer.strip() == ref for answer, ref in zip(untuned, references)), untuned


def test_answer_stops_at_eos_without_special_tokens(run_target):
    instruction, reference = held_out(1)[0]
    answer = stream_answer(run_target, prompt_ids(run_target, instruction), Sampling(max_tokens=50, temperature=0),
                           lambda _: None)
    assert answer.text == reference and "</s>" not in answer.text
    assert answer.new_tokens < 50  # stopped at EOS, well before the budget


def test_streamed_pieces_make_the_answer_and_sampling_is_seeded(run_target):
    instruction, _ = held_out(1)[0]
    ids = prompt_ids(run_target, instruction)
    hot = Sampling(max_tokens=24, temperature=5.0, top_p=1.0)

    def sample(seed: int):
        pieces: list[str] = []
        seed_everything(seed)
        answer = stream_answer(run_target, ids, hot, pieces.append)
        return answer, pieces

    first, pieces = sample(1)
    assert len(pieces) > 3  # written word by word, not once at the end
    assert "".join(pieces) == first.text
    again, _ = sample(1)
    other, _ = sample(2)
    assert again.text == first.text
    assert other.text != first.text


@pytest.fixture
def run_without_adapter(quickstart_run, tmp_path):
    path = tmp_path / "unfinished-run"
    path.mkdir()
    shutil.copy(quickstart_run[0] / "recipe.yaml", path / "recipe.yaml")
    return path


@pytest.mark.parametrize("case", ["missing", "bare adapter", "no adapter"])
def test_bad_targets_are_one_clear_paragraph(case, quickstart_run, run_without_adapter, tmp_path):
    run, _ = quickstart_run
    args, needles = {
        "missing": (["generate", str(tmp_path / "no-such-run"), "--prompt", "hi"], ["No such folder", "no-such-run"]),
        "bare adapter": (["chat", str(run / "adapter")],
                         ["bare peft adapter", f"Pass the run folder instead: `{run}`"]),
        "no adapter": (["generate", str(run_without_adapter), "--prompt", "hi"],
                       ["has recipe.yaml but no trained adapter", "still training"]),
    }[case]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    text = " ".join(result.stderr.split())  # rich wraps long lines
    for needle in needles:
        assert needle in text, text
