"""alpaca: instruction (+ blank line + input) -> user, output -> assistant."""

from __future__ import annotations

import pytest

from finetune.data.formats import RowError
from finetune.data.formats.alpaca import parse


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}, {"input": "   "}])
def test_without_input(extra):
    row = {"instruction": "Give a synonym of happy.", "output": "Joyful.", **extra}
    assert parse(row) == [
        {"role": "user", "content": "Give a synonym of happy."},
        {"role": "assistant", "content": "Joyful."},
    ]


def test_with_input():
    row = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert parse(row)[0]["content"] == "Translate to French.\n\nGood morning"


def test_missing_output_lists_the_columns_found():
    with pytest.raises(RowError, match=r"missing \(columns found: instruction, input, answer\)") as err:
        parse({"instruction": "x", "input": "", "answer": "y"})
    assert err.value.column == "output" and "columns: {output: <your column>}" in err.value.hint


def test_non_string_input_is_an_error():
    with pytest.raises(RowError, match="must be text, got list"):
        parse({"instruction": "x", "input": ["a"], "output": "y"})
