"""prompt-completion: one user turn and one assistant turn, verbatim."""

from __future__ import annotations

import pytest

from finetune.data.formats import RowError
from finetune.data.formats.prompt_completion import parse


def test_parse_is_verbatim():
    assert parse({"prompt": "2+2=", "completion": " 4"}) == [
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": " 4"},
    ]


@pytest.mark.parametrize("completion", ["", None, "\t"])
def test_empty_completion_is_an_error(completion):
    with pytest.raises(RowError, match="completion") as err:
        parse({"prompt": "p", "completion": completion})
    assert err.value.column == "completion"
