"""Reading local files, folders and Hub ids into rows that know their file and line."""

from __future__ import annotations

import json

import pytest

from finetune.data.sources import data_files, looks_local, read_rows
from finetune.errors import FinetuneError

KEY = "data.sources[0]"


def _rows(path, split="train"):
    return list(read_rows(str(path), split, KEY))


def test_jsonl_positions_are_1_based_lines_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    rows = _rows(path)
    assert [r.data for r in rows] == [{"a": 1}, {"a": 2}]
    assert [r.where for r in rows] == [f"{path} line 1", f"{path} line 3"]


def test_invalid_json_line_is_a_row_with_its_problem_and_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    rows = _rows(path)
    assert [r.data for r in rows] == [{"a": 1}, None, {"a": 3}]  # reading goes on after it
    assert rows[1].where == f"{path} line 2" and rows[1].text == '{"a": '
    assert rows[1].problem.startswith("not valid JSON: Expecting value")


def test_non_object_line_is_a_row_with_its_problem(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('["a", "b"]\n', encoding="utf-8")
    (row,) = _rows(path)
    assert row.problem.startswith("a JSON list, not an object") and row.text == '["a", "b"]'


def test_json_array_and_json_lines_named_json(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"a": 1}, {"a": 2}]), encoding="utf-8")
    assert [r.where for r in _rows(array)] == [f"{array} row 0", f"{array} row 1"]
    lines = tmp_path / "l.json"
    lines.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert [r.data["a"] for r in _rows(lines)] == [1, 2]
    obj = tmp_path / "o.json"
    obj.write_text(json.dumps({"data": [{"a": 1}]}), encoding="utf-8")
    with pytest.raises(FinetuneError, match="expected a list of row objects"):
        _rows(obj)


def test_csv_positions_are_the_record_start_lines(tmp_path, write_csv):
    path = write_csv("d.csv", [{"q": "one", "a": "x"}, {"q": "multi\nline", "a": "y"}, {"q": "three", "a": ""}])
    rows = _rows(path)
    assert [r.where.rsplit(" ", 1)[1] for r in rows] == ["2", "3", "5"]
    assert rows[1].data == {"q": "multi\nline", "a": "y"} and rows[2].data["a"] == ""


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), path)
    rows = _rows(path)
    assert [r.data for r in rows] == [{"text": "a", "n": 1}, {"text": "b", "n": 2}]
    assert rows[1].where == f"{path} row 1"


def test_folder_uses_the_split_files(tmp_path, write_jsonl):
    write_jsonl("d/train.jsonl", [{"s": "train"}])
    write_jsonl("d/validation.jsonl", [{"s": "validation"}])
    write_jsonl("d/test-00000-of-00001.jsonl", [{"s": "test"}])
    assert [r.data["s"] for r in _rows(tmp_path / "d", "validation")] == ["validation"]
    assert [r.data["s"] for r in _rows(tmp_path / "d", "test")] == ["test"]
    with pytest.raises(FinetuneError, match=r"splits train, validation, test but none for split 'dev'"):
        _rows(tmp_path / "d", "dev")


def test_folder_without_split_names_is_read_whole(tmp_path, write_jsonl):
    write_jsonl("d/part_b.jsonl", [{"i": 2}])
    write_jsonl("d/part_a.jsonl", [{"i": 1}])
    (tmp_path / "d" / "README.md").write_text("ignored")
    assert [r.data["i"] for r in _rows(tmp_path / "d")] == [1, 2]


def test_missing_local_path_names_the_recipe_key(tmp_path):
    with pytest.raises(FinetuneError, match=r"data.sources\[0\].path: .*nope.jsonl does not exist"):
        _rows(tmp_path / "nope.jsonl")
    with pytest.raises(FinetuneError, match="does not exist"):
        _rows("./data/missing")


def test_unsupported_file_and_empty_folder(tmp_path):
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(FinetuneError, match="supported files are .jsonl"):
        _rows(tmp_path / "d.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneError, match="holds no .jsonl"):
        _rows(tmp_path / "empty")


def test_local_or_hub():
    assert not looks_local("mosaicml/instruct-v3") and not looks_local("squad")
    assert looks_local("data/train.jsonl") and looks_local("./x") and looks_local("a/b/c")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FinetuneError) as err:
        _rows("someone-that-does-not-exist/no-such-data-set")
    message = str(err.value)
    assert "data.sources[0].path" in message and "HF_HUB_OFFLINE=1" in message and "local copy" in message


def test_data_files_single_file(tmp_path, write_jsonl):
    path = write_jsonl("x.jsonl", [{"a": 1}])
    assert data_files(path, "anything", KEY) == [path]
