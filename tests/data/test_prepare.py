"""prepare_data: mixing, held-out rows, overlong policies, eval prompts and the report."""

from __future__ import annotations

import os

import pytest

from finetune.data import PreparedData, prepare_data
from finetune.data.prepare import hold_out
from finetune.data.template import MistralTemplate
from finetune.errors import FinetuneError
from finetune.recipe.schema import DataConfig


def _pc_rows(n, prefix="q", answer="answer"):
    return [{"prompt": f"{prefix}{i}", "completion": f"{answer} {i}"} for i in range(n)]


def _decoded_prompts(tok, dataset):
    return sorted(tok.decode(ids).split("[/INST]")[0].split()[-1] for ids in dataset["input_ids"])


def _check_report_accounts_for_every_row(prepared: PreparedData):
    for source in prepared.report.sources:
        assert source.read == source.kept + source.dropped_total
    assert prepared.report.train_rows == len(prepared.train)


def test_output_shape(tok_v3, write_jsonl, data_config):
    prepared = prepare_data(data_config(write_jsonl("d.jsonl", _pc_rows(3)), "prompt-completion"), tok_v3)
    assert prepared.train.column_names == ["input_ids", "completion_mask"] and len(prepared.train) == 3
    assert prepared.eval is None and prepared.eval_prompts == []
    assert prepared.template.name == "mistral-v3"


def test_validation_ratio_holds_out_deterministically(tok_v1, write_jsonl):
    path = str(write_jsonl("d.jsonl", _pc_rows(20)))

    def run(seed, ratio=0.2):
        data = DataConfig(sources=[{"path": path, "format": "prompt-completion"}], validation_ratio=ratio, seed=seed)
        return prepare_data(data, tok_v1)

    first, again, other = run(0), run(0), run(1)
    assert (len(first.train), len(first.eval)) == (16, 4)
    assert first.eval["input_ids"] == again.eval["input_ids"] and first.train["input_ids"] == again.train["input_ids"]
    assert first.eval["input_ids"] != other.eval["input_ids"]
    assert set(_decoded_prompts(tok_v1, first.train)).isdisjoint(_decoded_prompts(tok_v1, first.eval))
    assert len(run(0, ratio=0.01).eval) == 1
    assert "validation_ratio 0.2" in first.report.summary()


def test_hold_out_edges():
    assert hold_out([1], 0.5) == ([1], [])
    assert hold_out([1, 2], 0.01) == ([2], [1])
    assert hold_out([1, 2], 0.9) == ([2], [1])
    assert hold_out([1, 2, 3], 0) == ([1, 2, 3], [])


def test_single_row_with_ratio_holds_nothing_out_and_says_so(tok_v1, write_jsonl):
    data = DataConfig(sources=[{"path": str(write_jsonl("d.jsonl", _pc_rows(1))), "format": "prompt-completion"}])
    prepared = prepare_data(data, tok_v1)
    assert prepared.eval is None and "nothing held out" in prepared.report.summary()


def test_sources_are_mixed_and_shuffled_with_the_seed(tok_v1, write_jsonl):
    a = str(write_jsonl("a.jsonl", _pc_rows(6, "a")))
    b = str(write_jsonl("b.jsonl", [{"text": f"doc {i}"} for i in range(6)]))
    sources = [{"path": a, "format": "prompt-completion"}, {"path": b, "format": "text"}]
    runs = [prepare_data(DataConfig(sources=sources, validation_ratio=0, seed=s), tok_v1).train for s in (0, 0, 3)]
    assert len(runs[0]) == 12 and runs[0]["input_ids"] == runs[1]["input_ids"]
    assert runs[0]["input_ids"] != runs[2]["input_ids"]
    is_text = [mask[0] == 1 for mask in runs[0]["completion_mask"]]  # text rows train their BOS too
    assert sum(is_text) == 6 and is_text != [False] * 6 + [True] * 6


def test_validation_sources_and_eval_prompts(tok_v3, write_jsonl):
    train = str(write_jsonl("train.jsonl", _pc_rows(4)))
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    valid = str(write_jsonl("valid.jsonl", rows))
    data = DataConfig(
        sources=[{"path": train, "format": "prompt-completion"}],
        validation_sources=[{"path": valid, "format": "messages", "system_prompt": "Be brief."}],
    )
    prepared = prepare_data(data, tok_v3)
    assert len(prepared.train) == 4 and len(prepared.eval) == 1
    (prompt_ids, reference_answer), = prepared.eval_prompts
    conversation = [{"role": "system", "content": "Be brief."}, *rows[0]["messages"]]
    assert prompt_ids == MistralTemplate.from_tokenizer(tok_v3).encode_prompt(conversation[:-1])
    assert prompt_ids[-1] == 4 and reference_answer == "4"
    assert [s.key for s in prepared.report.sources] == ["data.sources[0]", "data.validation_sources[0]"]


def test_text_rows_have_no_eval_prompts(tok_v1, write_jsonl):
    data = DataConfig(sources=[{"path": str(write_jsonl("t.jsonl", [{"text": f"d{i}"} for i in range(4)])), "format": "text"}], validation_ratio=0.5)
    prepared = prepare_data(data, tok_v1)
    assert len(prepared.eval) == 2 and prepared.eval_prompts == []


def _mixed_length_rows():
    """Two short rows, one with a long answer, one with a long prompt (nothing trainable survives a cut)."""
    return [
        {"prompt": "short", "completion": "ok"},
        {"prompt": "short too", "completion": "fine"},
        {"prompt": "tell", "completion": "word " * 60},
        {"prompt": "context " * 60, "completion": "answer"},
    ]


def test_overlong_truncate_counts_truncated_and_untrainable_rows(tok_v1, write_jsonl, data_config):
    path = write_jsonl("d.jsonl", _mixed_length_rows())
    prepared = prepare_data(data_config(path, "prompt-completion", data={"max_length": 32, "overlong": "truncate"}), tok_v1)
    source = prepared.report.sources[0]
    assert (source.read, source.kept, source.truncated) == (4, 3, 1)
    assert source.dropped == {"truncation left no trained tokens": 1}
    assert max(len(ids) for ids in prepared.train["input_ids"]) == 32
    assert all(sum(mask) > 0 for mask in prepared.train["completion_mask"])
    assert "1 truncation left no trained tokens" in prepared.report.summary()
    _check_report_accounts_for_every_row(prepared)


def test_overlong_drop_counts_dropped_rows(tok_v1, write_jsonl, data_config):
    path = write_jsonl("d.jsonl", _mixed_length_rows())
    prepared = prepare_data(data_config(path, "prompt-completion", data={"max_length": 32, "overlong": "drop"}), tok_v1)
    source = prepared.report.sources[0]
    assert (source.kept, source.truncated, source.dropped) == (2, 0, {"longer than max_length": 2})
    assert "dropped 2 (2 longer than max_length)" in prepared.report.summary()
    _check_report_accounts_for_every_row(prepared)


def test_overlong_error_names_rows_lengths_and_the_three_options(tok_v1, write_jsonl, data_config):
    rows = _mixed_length_rows() + [{"prompt": f"p{i}", "completion": "long " * 40} for i in range(6)]
    path = write_jsonl("d.jsonl", rows)
    with pytest.raises(FinetuneError) as err:
        prepare_data(data_config(path, "prompt-completion", data={"max_length": 32}), tok_v1)
    message = str(err.value)
    assert "8 rows are longer than data.max_length = 32 tokens" in message
    assert f"data.sources[0] {path} line 3 (" in message and "and 3 more" in message
    for option in ("data.overlong: truncate", "data.overlong: drop", "data.max_length"):
        assert option in message


def test_everything_dropped_is_an_error(tok_v1, write_jsonl, data_config):
    path = write_jsonl("d.jsonl", [{"prompt": "p", "completion": "long " * 40}])
    with pytest.raises(FinetuneError, match="No training rows are left"):
        prepare_data(data_config(path, "prompt-completion", data={"max_length": 16, "overlong": "drop"}), tok_v1)


def test_long_eval_prompts_are_skipped_and_counted(tok_v1, write_jsonl):
    """A truncated multi-turn row keeps its first answer, but its final prompt no longer fits."""
    train = str(write_jsonl("train.jsonl", _pc_rows(2)))
    turns = [("user", "q"), ("assistant", "short answer"), ("user", "context " * 60), ("assistant", "x")]
    long_row = {"messages": [{"role": role, "content": content} for role, content in turns]}
    short_row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    valid = str(write_jsonl("valid.jsonl", [long_row, short_row]))
    data = DataConfig(
        sources=[{"path": train, "format": "prompt-completion"}],
        validation_sources=[{"path": valid, "format": "messages"}],
        max_length=32, overlong="truncate",
    )
    prepared = prepare_data(data, tok_v1)
    assert len(prepared.eval) == 2 and prepared.report.source("data.validation_sources[0]").truncated == 1
    assert [reference for _, reference in prepared.eval_prompts] == ["a"]
    assert prepared.report.eval_prompts_skipped == 1
    assert "1 prompts longer than max_length skipped" in prepared.report.summary()


def test_train_on_all(tok_v3, write_jsonl, data_config):
    prepared = prepare_data(data_config(write_jsonl("d.jsonl", _pc_rows(2)), "prompt-completion", data={"train_on": "all"}), tok_v3)
    assert all(set(mask) == {1} for mask in prepared.train["completion_mask"])


def test_summary_lists_sources_and_totals(tok_v1, write_jsonl, data_config):
    prepared = prepare_data(data_config(write_jsonl("d.jsonl", _pc_rows(3)), "prompt-completion"), tok_v1)
    summary = prepared.report.summary()
    assert "template mistral-v1 (sentencepiece:tokenizer.model)" in summary
    assert "data.sources[0]" in summary and "read 3, kept 3" in summary and "train: 3 rows" in summary


def test_chat_template_errors_name_the_row(fresh_tokenizer, write_jsonl, data_config):
    tok = fresh_tokenizer("v1")
    tok.chat_template = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    path = write_jsonl("d.jsonl", _pc_rows(2))
    with pytest.raises(FinetuneError) as err:
        prepare_data(data_config(path, "prompt-completion", system_prompt="sys"), tok)
    assert f"data.sources[0], {path} line" in str(err.value) and "no system role" in str(err.value)


def test_large_sets_are_encoded_on_worker_processes_with_the_same_result(tok_v1, write_jsonl, data_config, monkeypatch):
    import finetune.data.prepare as prepare

    rows = [{"prompt": f"Row {n}: is {n} even?", "response": "yes" if n % 2 == 0 else "no"} for n in range(5000)]
    rows[123] = {"prompt": " ".join(map(str, range(100))), "response": "a"}  # over-long: dropped by the policy
    config = data_config(write_jsonl("big.jsonl", rows), "instruct-v3", data={"overlong": "drop", "max_length": 64})
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU core: encoding never uses workers")
    parallel = prepare_data(config, tok_v1)  # 5,000 rows >= PARALLEL_FROM: forked workers
    monkeypatch.setattr(prepare, "PARALLEL_FROM", 10**9)
    serial = prepare_data(config, tok_v1)
    assert parallel.train["input_ids"] == serial.train["input_ids"]
    assert parallel.train["completion_mask"] == serial.train["completion_mask"]
    assert parallel.report.summary() == serial.report.summary()
    assert [r.where for r in parallel.rejected.rows] == [r.where for r in serial.rejected.rows] != []
