"""Recipe loading: YAML + overrides → validated Recipe, and the errors users get for bad input."""

from __future__ import annotations

import textwrap

import pytest

from finetune.errors import FinetuneError
from finetune.recipe.load import load_recipe, parse_override

GOOD = """\
model:
  base: models/tiny-mistral
lora:
  r: 8
data:
  sources:
    - path: data/quickstart/train.jsonl
      format: instruct-v3
train:
  max_steps: 10
"""


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(FinetuneError) as info:
        load_recipe(path, list(overrides))
    return info.value.render()


def test_good_recipe_fills_defaults_and_names_run_after_file(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD, "my-run.yaml"))
    assert recipe.lora.r == 8
    assert recipe.lora.alpha == 32  # default
    assert recipe.model.quantization == "4bit"
    assert recipe.train.max_steps == 10
    assert recipe.output.name == "my-run"


def test_overrides_are_parsed_as_yaml_and_reach_nested_lists(tmp_path):
    recipe = load_recipe(
        write(tmp_path, GOOD),
        ["lora.r=32", "train.learning_rate=3e-4", "lora.target_modules=[q_proj, v_proj]",
         "data.sources.0.path=other.jsonl", "eval.generate=true", "model.revision=null"],
    )
    assert recipe.lora.r == 32
    assert recipe.train.learning_rate == pytest.approx(3e-4)
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.data.sources[0].path == "other.jsonl"
    assert recipe.eval.generate is True


def test_rank_alias_is_accepted(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD.replace("  r: 8", "  rank: 12")))
    assert recipe.lora.r == 12


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    message = error_of(write(tmp_path, GOOD.replace("  r: 8", "  rnak: 8")))
    assert "recipe.yaml line 4" in message
    assert "unknown key `lora.rnak`" in message
    assert "Did you mean `lora.rank`" in message
    assert "Keys allowed in `lora`: r, rank, alpha" in message


def test_unknown_section_is_reported(tmp_path):
    message = error_of(write(tmp_path, GOOD + "trian:\n  seed: 1\n"))
    assert "unknown key `trian`" in message and "Did you mean `train`" in message


def test_wrong_type_names_key_line_and_value(tmp_path):
    message = error_of(write(tmp_path, GOOD.replace("max_steps: 10", "max_steps: lots")))
    assert "recipe.yaml line 10" in message
    assert "`train.max_steps`" in message and "'lots'" in message


def test_wrong_choice_lists_allowed_values(tmp_path):
    message = error_of(write(tmp_path, GOOD), ["model.quantization=3bit"])
    assert "--set model.quantization=3bit" in message
    assert "'4bit', '8bit' or 'none'" in message


def test_all_problems_are_reported_at_once(tmp_path):
    text = GOOD.replace("  r: 8", "  r: -1").replace("max_steps: 10", "max_step: 10")
    message = error_of(write(tmp_path, text))
    assert "2 problems" in message and "lora.r" in message and "train.max_step" in message


def test_missing_required_key_says_what_it_is(tmp_path):
    message = error_of(write(tmp_path, GOOD.replace("  base: models/tiny-mistral\n", "  revision: main\n")))
    assert "`model.base` is required but missing" in message
    assert "local folder" in message  # the field's own description


def test_missing_recipe_file(tmp_path):
    message = error_of(tmp_path / "nope.yaml")
    assert "Recipe file not found" in message and "nope.yaml" in message


def test_invalid_yaml_names_line(tmp_path):
    message = error_of(write(tmp_path, "model:\n  base: [unclosed\n"))
    assert "is not valid YAML" in message and "line" in message


@pytest.mark.parametrize("text", ["lora.r", "=3", "lora..r=3", "no-equals-sign"])
def test_bad_override_syntax(text):
    with pytest.raises(FinetuneError, match="Bad override"):
        parse_override(text)


def test_override_index_out_of_range(tmp_path):
    message = error_of(write(tmp_path, GOOD), ["data.sources.2.path=x.jsonl"])
    assert "index below 1" in message


def test_generation_eval_needs_held_out_rows(tmp_path):
    message = error_of(write(tmp_path, GOOD), ["eval.generate=true", "data.validation_ratio=0"])
    assert "held-out rows" in message
