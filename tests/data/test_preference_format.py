"""The preference format: three row shapes -> one PreferencePair; bad rows name the column and reason."""

from __future__ import annotations

import json

import pytest

from finetune.data.conversation import PreferencePair
from finetune.data.bad_rows import RejectedRows
from finetune.data.examples import load_examples
from finetune.data.formats import RowError
from finetune.data.formats.preference import parse
from finetune.recipe.schema import SourceConfig
from tests.conftest import run_cli


def _m(role, content):
    return {"role": role, "content": content}


SYSTEM, Q, EARLIER = _m("system", "Be brief."), _m("user", "Sky colour?"), [_m("user", "Hi"), _m("assistant", "Hello")]


def test_string_pair_is_one_user_turn_and_two_answers():
    pair = parse({"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."})
    assert pair == PreferencePair([Q], "Blue.", "Green.")


def test_explicit_message_prompt_with_one_assistant_message_per_answer():
    row = {"prompt": [SYSTEM, *EARLIER, Q], "chosen": [_m("assistant", "Blue.")], "rejected": [_m("assistant", "Red.")]}
    assert parse(row) == PreferencePair([SYSTEM, *EARLIER, Q], "Blue.", "Red.")


def test_explicit_message_prompt_with_string_answers():
    assert parse({"prompt": [Q], "chosen": "Blue.", "rejected": "Red."}) == PreferencePair([Q], "Blue.", "Red.")


@pytest.mark.parametrize("prompt_value", ["absent", None])
def test_implicit_prompt_is_the_shared_prefix(prompt_value):
    row = {"chosen": [SYSTEM, *EARLIER, Q, _m("assistant", "Blue.")], "rejected": [SYSTEM, *EARLIER, Q, _m("assistant", "Red.")]}
    if prompt_value is None:
        row["prompt"] = None
    assert parse(row) == PreferencePair([SYSTEM, *EARLIER, Q], "Blue.", "Red.")


@pytest.mark.parametrize(
    "row, column, reason",
    [
        ({"prompt": "q", "rejected": "b"}, "chosen", "the column is missing (columns found: prompt, rejected)"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "rejected", "identical to chosen"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "rejected", "null"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
        ({"prompt": [_m("assistant", "x"), Q], "chosen": "a", "rejected": "b"}, "prompt",
         "messages[0] has role 'assistant' where 'user' was expected"),
        ({"prompt": [Q, _m("assistant", "x")], "chosen": "a", "rejected": "b"}, "prompt", "must end with 'user'"),
        ({"prompt": [Q], "chosen": [_m("assistant", "a"), _m("user", "b")], "rejected": "b"}, "chosen",
         "exactly one assistant message"),
        ({"prompt": [Q], "chosen": [_m("human", "a")], "rejected": "b"}, "chosen", "chosen[0] has role 'human'"),
        ({"chosen": "a", "rejected": "b"}, "chosen", "no prompt column"),
        ({"chosen": [Q, _m("assistant", "a")], "rejected": [_m("user", "Other?"), _m("assistant", "b")]}, "rejected",
         "differs from chosen at messages[0]"),
        ({"chosen": [*EARLIER, Q, _m("assistant", "a")], "rejected": [Q, _m("assistant", "b")]}, "rejected",
         "has 2 messages and chosen has 4"),
        ({"chosen": [Q, _m("assistant", "a"), Q], "rejected": [Q, _m("assistant", "b"), Q]}, "chosen",
         "must end with 'assistant'"),
        ({"chosen": [Q, _m("assistant", "same")], "rejected": [Q, _m("assistant", "same")]}, "rejected",
         "identical to chosen"),
    ],
)
def test_bad_rows_name_column_and_reason(row, column, reason):
    with pytest.raises(RowError) as err:
        parse(row)
    assert err.value.column == column
    assert reason in err.value.reason


def test_source_system_prompt_goes_in_front_of_the_prompt(write_jsonl):
    path = write_jsonl("p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                   {"prompt": [SYSTEM, Q], "chosen": "a", "rejected": "b"}])
    items, report = load_examples(SourceConfig(path=str(path), format="preference", system_prompt="Be kind."), "data.sources[0]", RejectedRows("error"))
    assert items[0].example.prompt == [_m("system", "Be kind."), _m("user", "q")]
    assert items[1].example.prompt == [SYSTEM, Q]  # a row's own system message wins
    assert report.read == 2


def _dpo_recipe(tmp_path, rows: list, fmt: str = "preference", method: str = "dpo", base=None) -> str:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  base: {base or tmp_path / 'no-model'}\ndata:\n  sources:\n    - path: {data}\n      format: {fmt}\n"
        f"train:\n  method: {method}\n"
    )
    return str(recipe)


def _assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_cli_bad_pair_exits_2_naming_file_line_and_column(tmp_path, tiny_mistral):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"},
            {"chosen": [Q, _m("assistant", "a")], "rejected": [_m("user", "Other?"), _m("assistant", "b")]}]
    result = run_cli("train", _dpo_recipe(tmp_path, rows, base=tiny_mistral))
    _assert_clean_error(result, "pairs.jsonl line 2", "column 'rejected'", "no common prompt")


def test_cli_dpo_needs_preference_sources_and_sft_refuses_them(tmp_path):
    rows = [{"prompt": "q", "completion": "a"}]
    _assert_clean_error(run_cli("recipe", "check", _dpo_recipe(tmp_path, rows, fmt="prompt-completion")),
                        "every data source needs `format: preference`")
    _assert_clean_error(run_cli("recipe", "check", _dpo_recipe(tmp_path, rows, method="sft")),
                        "need `train.method: dpo`")
