"""text: the document itself."""

from __future__ import annotations

import pytest

from finetune.data.formats import RowError
from finetune.data.formats.text import parse


def test_parse_returns_the_text():
    assert parse({"text": "Once upon a time.\n", "meta": 1}) == "Once upon a time.\n"


def test_empty_text_is_an_error():
    with pytest.raises(RowError, match="is empty"):
        parse({"text": " "})
