"""Preference pairs -> prompt/chosen/rejected ids: token-exact with mistral-common, overlong policy, report."""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest, InstructRequest

from finetune.data.preferences import IDENTICAL_AFTER_CUT, prepare_preferences
from finetune.data.report import OVERLONG
from finetune.errors import FinetuneError
from finetune.recipe.schema import DpoConfig

_CLASSES = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}


def _m(role, content):
    return {"role": role, "content": content}


# One row of each shape; answers with leading / repeated spaces, where the HF fast tokenizer and
# SentencePiece (mistral-common) disagree.
ROWS = [
    {"prompt": "Is  this   fine?", "chosen": " Yes,  it is.", "rejected": "No."},
    {"prompt": [_m("system", "Be brief."), _m("user", "Hi"), _m("assistant", "Hello"), _m("user", "Sky colour?")],
     "chosen": [_m("assistant", "Blue")], "rejected": [_m("assistant", "  Green  ")]},
    {"chosen": [_m("user", "2+2?"), _m("assistant", "4")], "rejected": [_m("user", "2+2?"), _m("assistant", "5 ")]},
]


def _as_conversation(row, side):
    if "prompt" not in row:
        return row[side]
    prompt = [_m("user", row["prompt"])] if isinstance(row["prompt"], str) else row["prompt"]
    answer = row[side] if isinstance(row[side], str) else row[side][0]["content"]
    return [*prompt, _m("assistant", answer)]


def _mc_full(reference, messages):
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [_CLASSES[m["role"]](content=m["content"]) for m in messages if m["role"] != "system"]
    return reference.instruct_tokenizer.encode_instruct(InstructRequest(messages=turns, system_prompt=system)).tokens


def _mc_prompt(reference, messages):
    request = ChatCompletionRequest(messages=[_CLASSES[m["role"]](content=m["content"]) for m in messages])
    return reference.encode_chat_completion(request).tokens


def _prepare(write_jsonl, data_config, tokenizer, rows, dpo=None, **data):
    path = write_jsonl("pairs.jsonl", rows)
    config = data_config(path, "preference", data={"template": "mistral", **data})
    return prepare_preferences(config, dpo or DpoConfig(), tokenizer)


def test_ids_are_mistral_commons_tokens(tokenizer, reference, version, write_jsonl, data_config):
    """prompt = chat-completion prompt; prompt + answer = the whole conversation; answers end in EOS."""
    prepared = _prepare(write_jsonl, data_config, tokenizer, ROWS, seed=0)
    by_prompt = {tuple(r["prompt_input_ids"]): r for r in prepared.train}
    assert len(by_prompt) == len(ROWS)
    sp = reference.instruct_tokenizer.tokenizer
    for row in ROWS:
        chosen, rejected = _as_conversation(row, "chosen"), _as_conversation(row, "rejected")
        prompt_ids = _mc_prompt(reference, chosen[:-1])
        assert prompt_ids[0] == sp.bos_id and prompt_ids.count(sp.bos_id) == 1
        got = by_prompt[tuple(prompt_ids)]
        assert prompt_ids + got["chosen_input_ids"] == _mc_full(reference, chosen)
        assert prompt_ids + got["rejected_input_ids"] == _mc_full(reference, rejected)
        for side, conversation in (("chosen", chosen), ("rejected", rejected)):
            text = conversation[-1]["content"] if version == "v1" else conversation[-1]["content"].rstrip(" ")
            assert got[f"{side}_input_ids"] == [*sp.encode(text, bos=False, eos=False), sp.eos_id]


def test_hf_fast_tokenizer_would_differ_on_these_rows(tok_v1):
    """The reason the trainer must not re-tokenize: the fast tokenizer disagrees on leading spaces."""
    from finetune.data.text_encoder import text_encoder

    exact = text_encoder(tok_v1)
    assert tok_v1(" Yes,  it is.", add_special_tokens=False).input_ids != exact(" Yes,  it is.")


def test_report_counts_pairs_and_tokens(tok_v1, write_jsonl, data_config):
    prepared = _prepare(write_jsonl, data_config, tok_v1, ROWS * 4, validation_ratio=0.25)
    report = prepared.report
    assert (report.train_rows, report.eval_rows) == (9, 3)
    rows = list(prepared.train)
    answers = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows)
    assert report.trained_tokens == answers
    assert report.train_tokens == answers + 2 * sum(len(r["prompt_input_ids"]) for r in rows)
    assert "train: 9 pairs" in report.summary() and "eval: 3 pairs" in report.summary()


LONG = {"prompt": "word " * 40, "chosen": "yes " * 12, "rejected": "no " * 12}


def test_overlong_error_lists_the_pair_and_the_limit(tok_v1, write_jsonl, data_config):
    with pytest.raises(FinetuneError) as err:
        _prepare(write_jsonl, data_config, tok_v1, [ROWS[0], LONG], max_length=32, overlong="error")
    assert "pairs.jsonl line 2" in err.value.message and "data.max_length 32" in err.value.message
    assert "data.overlong: truncate" in err.value.hint


def test_overlong_drop_counts_the_pair(tok_v1, write_jsonl, data_config):
    prepared = _prepare(write_jsonl, data_config, tok_v1, [ROWS[0], LONG], max_length=32, overlong="drop")
    assert prepared.report.train_rows == 1
    assert prepared.report.sources[0].dropped[OVERLONG] == 1
    (rejected,) = prepared.rejected.rows  # and it is named in rejected.jsonl, with its line
    assert rejected.where.endswith("line 2") and "data.overlong: drop" in rejected.reason and not rejected.bad


def test_truncate_keeps_bos_and_prompt_end_then_cuts_answers(tok_v1, write_jsonl, data_config):
    dpo = DpoConfig(max_prompt_length=16, max_completion_length=6)
    prepared = _prepare(write_jsonl, data_config, tok_v1, [LONG], dpo=dpo, max_length=20, overlong="truncate")
    row = prepared.train[0]
    full = _prepare(write_jsonl, data_config, tok_v1, [LONG], max_length=128).train[0]
    assert row["prompt_input_ids"] == [full["prompt_input_ids"][0], *full["prompt_input_ids"][-15:]]
    assert row["chosen_input_ids"] == full["chosen_input_ids"][:4]  # 20 - 16 prompt tokens left
    assert row["rejected_input_ids"] == full["rejected_input_ids"][:4]
    assert prepared.report.sources[0].truncated == 1


def test_truncation_that_makes_the_answers_equal_drops_the_pair(tok_v1, write_jsonl, data_config):
    same_start = {"prompt": "q", "chosen": "the same long start then yes", "rejected": "the same long start then no"}
    prepared = _prepare(write_jsonl, data_config, tok_v1, [ROWS[0], same_start],
                        dpo=DpoConfig(max_completion_length=3), overlong="truncate")
    assert prepared.report.train_rows == 1
    assert prepared.report.sources[0].dropped[IDENTICAL_AFTER_CUT] == 1


def test_dropping_every_pair_is_an_error(tok_v1, write_jsonl, data_config):
    with pytest.raises(FinetuneError) as err:
        _prepare(write_jsonl, data_config, tok_v1, [LONG], max_length=30, overlong="drop")
    assert "No training pairs are left" in err.value.message


def test_truncate_always_leaves_room_for_an_answer(tok_v1, write_jsonl, data_config):
    prepared = _prepare(write_jsonl, data_config, tok_v1, [LONG], max_length=30, overlong="truncate")
    row = prepared.train[0]
    assert len(row["prompt_input_ids"]) == 29 and len(row["chosen_input_ids"]) == 1


def test_sft_data_path_refuses_pairs_with_a_clear_error(tok_v1, write_jsonl, data_config):
    """prepare_data (SFT) on preference sources: a FinetuneError, which callers such as merge handle."""
    from finetune.data import prepare_data

    config = data_config(write_jsonl("pairs.jsonl", ROWS), "preference", data={"template": "mistral"})
    with pytest.raises(FinetuneError, match="train.method: dpo"):
        prepare_data(config, tok_v1)
