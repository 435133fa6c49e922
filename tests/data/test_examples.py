"""Loading a source: column mapping, filter, system prompt, max_rows, and row errors that name
the recipe key, the file, the row and the column."""

from __future__ import annotations

import re

import pytest

from finetune.data.bad_rows import RejectedRows
from finetune.data.examples import load_examples
from finetune.errors import FinetuneError
from finetune.recipe.schema import SourceConfig

KEY = "data.sources[0]"


def _load(path, fmt, **keys):
    """Load under ``data.on_bad_row: error``: the bad rows, if any, become one error."""
    rejected = RejectedRows("error")
    loaded = load_examples(SourceConfig(path=str(path), format=fmt, **keys), KEY, rejected)
    rejected.raise_if_bad()
    return loaded


def _error(path, fmt, **keys) -> str:
    with pytest.raises(FinetuneError) as err:
        _load(path, fmt, **keys)
    return str(err.value)


def test_missing_column_names_file_line_column_and_lists_columns(write_jsonl):
    path = write_jsonl("d.jsonl", [{"prompt": "q", "response": "a"}, {"prompt": "q", "answer": "a", "source": "s"}])
    message = _error(path, "instruct-v3")
    assert f"{KEY} (instruct-v3 format), {path} line 2, column 'response'" in message
    assert "columns found: prompt, answer, source" in message and "columns: {response: <your column>}" in message


@pytest.mark.parametrize("value, reason", [("", "the response is empty"), (None, "the response is null"), ("   ", "the response is empty (whitespace only)")])
def test_empty_or_null_response_is_an_error(write_jsonl, value, reason):
    path = write_jsonl("d.jsonl", [{"prompt": "q", "response": "a"}] * 3 + [{"prompt": "q", "response": value}])
    message = _error(path, "instruct-v3")
    assert f"{path} line 4, column 'response': {reason}" in message


def test_empty_csv_output_names_the_csv_line(write_csv):
    path = write_csv("d.csv", [{"instruction": "i", "input": "", "output": "o"}, {"instruction": "i", "input": "", "output": ""}])
    assert f"{path} line 3, column 'output': the output (the response) is empty" in _error(path, "alpaca")


def test_wrong_role_order_names_the_row_and_message(write_jsonl):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "a"}]},
    ]
    message = _error(write_jsonl("chat.jsonl", rows), "messages")
    assert "chat.jsonl line 2, column 'messages': messages[1] has role 'user' where 'assistant' was expected" in message


def test_parquet_rows_are_named_by_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x", None]}), path)
    assert f"{path} row 1, column 'completion': the completion (the response) is null" in _error(path, "prompt-completion")


def test_column_mapping_renames_before_parsing(write_jsonl):
    path = write_jsonl("d.jsonl", [{"question": "q", "answer": "a"}])
    items, _ = _load(path, "prompt-completion", columns={"prompt": "question", "completion": "answer"})
    assert items[0].example == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_mapped_column_missing_names_both_names(write_jsonl):
    path = write_jsonl("d.jsonl", [{"question": "q", "reply": "a"}])
    message = _error(path, "prompt-completion", columns={"prompt": "question", "completion": "answer"})
    assert "column 'answer': the column is missing (mapped to 'completion'" in message


def test_mapped_optional_column_may_be_absent(write_jsonl):
    path = write_jsonl("d.jsonl", [{"task": "t", "context": "c", "answer": "a"}, {"task": "t2", "answer": "a2"}])
    items, _ = _load(path, "alpaca", columns={"instruction": "task", "input": "context", "output": "answer"})
    assert [item.example[0]["content"] for item in items] == ["t\n\nc", "t2"]


def test_unknown_columns_key_is_caught_before_reading(write_jsonl):
    path = write_jsonl("d.jsonl", [{"prompt": "q", "response": "a"}])
    message = _error(path, "instruct-v3", columns={"reponse": "answer"})
    assert "data.sources[0].columns: 'reponse' is not a column of the instruct-v3 format" in message


def test_system_prompt_applies_unless_the_row_has_its_own(write_jsonl):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    items, _ = _load(write_jsonl("c.jsonl", rows), "messages", system_prompt="default")
    assert [item.example[0]["content"] for item in items] == ["default", "own"]


def _v3_rows(sources):
    return [{"prompt": f"q{i}", "response": f"a{i}", "source": s} for i, s in enumerate(sources)]


def test_source_filter_keeps_listed_sources_and_counts_the_rest(write_jsonl):
    path = write_jsonl("v3.jsonl", _v3_rows(["dolly", "math", "dolly", "code"]))
    items, report = _load(path, "instruct-v3", source_filter=["dolly", "code"])
    assert [item.example[0]["content"] for item in items] == ["q0", "q2", "q3"]
    assert report.read == 4 and report.dropped["not in source_filter"] == 1


def test_source_filter_matching_nothing_lists_the_sources_found(write_jsonl):
    path = write_jsonl("v3.jsonl", _v3_rows(["dolly", "math", "dolly"]))
    message = _error(path, "instruct-v3", source_filter=["Dolly"])
    assert "keeps none of the 3 rows" in message and "'dolly' (2), 'math' (1)" in message


def test_source_filter_needs_a_source_column(write_jsonl):
    path = write_jsonl("d.jsonl", [{"prompt": "q", "response": "a"}])
    assert "source_filter needs a 'source' column" in _error(path, "instruct-v3", source_filter=["x"])


def test_max_rows_caps_after_filtering(write_jsonl):
    path = write_jsonl("v3.jsonl", _v3_rows(["a", "b", "a", "b", "a", "a"]))
    items, report = _load(path, "instruct-v3", source_filter=["a"], max_rows=2)
    assert [item.example[0]["content"] for item in items] == ["q0", "q2"]
    assert report.read == 3 and report.stopped_at_max_rows == 2
    assert "stopped reading at max_rows=2" in report.line()


def test_rows_carry_their_position(write_jsonl):
    items, _ = _load(write_jsonl("d.jsonl", _v3_rows(["x", "y"])), "instruct-v3")
    assert [re.sub(r".* ", "", item.where) for item in items] == ["1", "2"]


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "data.sources[0]: " in _error(tmp_path / "empty.jsonl", "text") and "has no rows" in _error(tmp_path / "empty.jsonl", "text")
