"""A deliberately dirty data set: every bad row is reported with its file and line (on_bad_row: error),
or skipped and written with its reason to rejected.jsonl (skip); no row is ever lost silently."""

from __future__ import annotations

import json

import pytest

from finetune.data import prepare_data
from finetune.errors import FinetuneError

GOOD = [
    {"prompt": "Is a grape a fruit?", "response": "yes"},
    {"prompt": "Ist eine Kirsche eine Frucht? Это ягода? 葡萄是水果吗?", "response": "ja – да – 是"},  # non-ASCII, fine
]


@pytest.fixture
def dirty(tmp_path):
    """instruct-v3 lines 1-9 (bad: 3, 4, 5, 6, 7, 8) and a messages file (bad: line 2)."""
    lines = [
        json.dumps(GOOD[0]),
        json.dumps(GOOD[1], ensure_ascii=False),
        '{"prompt": "Is a pear a fruit?", "response": ',  # 3: not valid JSON
        json.dumps({"prompt": "Is a fig a fruit?"}),  # 4: missing column
        json.dumps({"prompt": "Is a plum a fruit?", "response": None}),  # 5: null
        json.dumps({"prompt": "Is a lime a fruit?", "response": "   "}),  # 6: empty
        json.dumps({"prompt": "How many legs has a cat?", "response": 4}),  # 7: a number where a string belongs
        json.dumps(["a", "list"]),  # 8: not an object
        json.dumps({"prompt": "Name fruits. " * 60, "response": "apple"}),  # 9: longer than max_length
    ]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(lines) + "\n", encoding="utf-8")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n"
        + json.dumps({"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]}) + "\n",
        encoding="utf-8",
    )
    return qa, chat


def config(qa, chat, on_bad_row):
    from finetune.recipe.schema import DataConfig

    return DataConfig(
        sources=[{"path": str(qa), "format": "instruct-v3"}, {"path": str(chat), "format": "messages"}],
        validation_ratio=0, max_length=64, overlong="drop", on_bad_row=on_bad_row,
    )


BAD = {
    "qa.jsonl line 3": "not valid JSON",
    "qa.jsonl line 4, column 'response'": "missing",
    "qa.jsonl line 5, column 'response'": "null",
    "qa.jsonl line 6, column 'response'": "empty",
    "qa.jsonl line 7, column 'response'": "int",
    "qa.jsonl line 8": "not an object",
    "chat.jsonl line 2, column 'messages'": "role 'assistant' where 'user' was expected",
}


def test_error_lists_every_bad_row_with_its_line_and_reason(dirty, tok_v1):
    with pytest.raises(FinetuneError) as err:
        prepare_data(config(*dirty, "error"), tok_v1)
    message = str(err.value)
    assert message.startswith("7 bad rows (data.on_bad_row: error):")
    lines = message.splitlines()
    for where, reason in BAD.items():
        (line,) = [text for text in lines if where in text]
        assert reason in line, line
    assert "qa.jsonl line 9" not in message  # over-long under `drop` is a choice, not a bad row
    assert "data.on_bad_row: skip" in message


def test_skip_trains_on_the_good_rows_and_accounts_for_every_other(dirty, tok_v1, tmp_path):
    data = prepare_data(config(*dirty, "skip"), tok_v1)
    assert len(data.train) == 3  # two good QA rows and the good conversation
    for source in data.report.sources:
        assert source.read == source.kept + source.dropped_total
    qa, chat = data.report.sources
    assert (qa.read, qa.kept, dict(qa.dropped)) == (9, 2, {"bad row": 6, "longer than max_length": 1})
    assert (chat.read, chat.kept, dict(chat.dropped)) == (2, 1, {"bad row": 1})

    assert data.rejected.write(tmp_path / "rejected.jsonl") == 8
    records = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    where = {r["where"].split("/")[-1] + (f", column {r['column']!r}" if r["column"] else ""): r for r in records}
    for place, reason in BAD.items():
        assert reason in where[place]["reason"]
    assert where["qa.jsonl line 3"]["row"] == '{"prompt": "Is a pear a fruit?", "response": '  # the raw text kept
    assert where["qa.jsonl line 7, column 'response'"]["row"] == {"prompt": "How many legs has a cat?", "response": 4}
    assert "longer than data.max_length = 64" in where["qa.jsonl line 9"]["reason"]


def test_one_bad_row_reads_as_before(write_jsonl, data_config, tok_v1):
    path = write_jsonl("d.jsonl", [GOOD[0], {"prompt": "q", "response": ""}])
    with pytest.raises(FinetuneError, match=r"d.jsonl line 2, column 'response': the response is empty\. Fix or remove that row"):
        prepare_data(data_config(path, "instruct-v3"), tok_v1)
