"""instruct-v3: the Alpaca-style framing is stripped, with or without colons or preamble."""

from __future__ import annotations

import pytest

from finetune.data.formats import RowError
from finetune.data.formats.instruct_v3 import instruction, parse

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.mark.parametrize(
    "prompt",
    [
        f"{PREAMBLE}\n\n### Instruction\nName three colors.\n\n### Response\n",
        f"{PREAMBLE}\n\n### Instruction:\nName three colors.\n\n### Response:\n",
        f"{PREAMBLE}\n### Instruction:\n\nName three colors.\n### Response:",
        f"{PREAMBLE} ### Instruction: Name three colors. ### Response:",
        "### Instruction\nName three colors.\n\n### Response\n",
        "\n\n  ### Instruction:\nName three colors.\n### Response:  \n",
        "Name three colors.",
        "   Name three colors.\n\n",
    ],
)
def test_framing_is_stripped(prompt):
    assert instruction(prompt) == "Name three colors."


def test_multiline_instruction_keeps_its_inner_newlines():
    prompt = f"{PREAMBLE}\n\n### Instruction\nSummarize:\n\nLine A\nLine B\n\n### Response\n"
    assert instruction(prompt) == "Summarize:\n\nLine A\nLine B"


def test_input_section_is_joined_like_alpaca():
    prompt = f"{PREAMBLE}\n\n### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:\n"
    assert instruction(prompt) == "Translate.\n\nBonjour"


def test_response_marker_in_the_middle_is_kept():
    prompt = "### Instruction\nExplain what '### Response' means in a prompt.\n### Response\n"
    assert instruction(prompt) == "Explain what '### Response' means in a prompt."


def test_parse_builds_one_exchange_and_strips_the_response():
    row = {"prompt": f"{PREAMBLE}\n\n### Instruction\nSay hi\n\n### Response\n", "response": "\nHi!\n", "source": "dolly"}
    assert parse(row) == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]


def test_framing_without_instruction_is_an_error():
    with pytest.raises(RowError, match="only the instruction framing") as err:
        parse({"prompt": f"{PREAMBLE}\n\n### Instruction\n\n### Response\n", "response": "x"})
    assert err.value.column == "prompt"


@pytest.mark.parametrize("response, reason", [("", "is empty"), ("  \n", "whitespace only"), (None, "null"), (7, "must be text")])
def test_bad_responses_are_errors(response, reason):
    with pytest.raises(RowError, match=reason) as err:
        parse({"prompt": "q", "response": response})
    assert err.value.column == "response"
