"""messages: optional system, then user/assistant alternating, ending with assistant."""

from __future__ import annotations

import pytest

from finetune.data.formats import RowError
from finetune.data.formats.messages import parse


def _m(role, content="x"):
    return {"role": role, "content": content}


def test_multi_turn_with_system_is_kept():
    messages = [_m("system", "s"), _m("user", "q1"), _m("assistant", "a1"), _m("user", "q2"), _m("assistant", "a2")]
    assert parse({"messages": messages}) == messages


def test_extra_message_keys_are_ignored():
    assert parse({"messages": [{"role": "user", "content": "q", "name": "bob"}, _m("assistant")]})[0] == _m("user", "q")


@pytest.mark.parametrize(
    "messages, reason",
    [
        ([_m("assistant"), _m("user"), _m("assistant")], r"messages\[0\] has role 'assistant' where 'user' was expected"),
        ([_m("user"), _m("user"), _m("assistant")], r"messages\[1\] has role 'user' where 'assistant' was expected"),
        ([_m("user"), _m("assistant"), _m("system"), _m("assistant")], "only the first message may be a system message"),
        ([_m("user"), _m("assistant"), _m("user")], "must end with 'assistant'"),
        ([_m("system")], "only a system message"),
        ([], "no messages"),
        ([_m("human"), _m("gpt")], "roles must be one of system, user, assistant"),
        ([{"from": "human", "value": "hi"}], "ShareGPT"),
        ([_m("user"), _m("assistant", "  ")], r"messages\[1\] \(assistant\) content is empty"),
        ([_m("user"), _m("assistant", None)], "null content"),
        ([_m("user"), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}], "must be text, got list"),
        (["hello"], r"messages\[0\] is str"),
    ],
)
def test_bad_conversations_name_the_message(messages, reason):
    with pytest.raises(RowError, match=reason) as err:
        parse({"messages": messages})
    assert err.value.column == "messages"


@pytest.mark.parametrize("value, reason", [(None, "null"), ("user: hi", "expected a list")])
def test_bad_column_values(value, reason):
    with pytest.raises(RowError, match=reason):
        parse({"messages": value})


def test_json_string_column_is_decoded():
    assert parse({"messages": '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'})[1] == _m("assistant", "a")
    with pytest.raises(RowError, match="not valid JSON"):
        parse({"messages": '[{"role": "user"'})
