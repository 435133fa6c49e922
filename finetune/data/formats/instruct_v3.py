"""``instruct-v3``: the mosaicml/instruct-v3 layout (columns ``prompt``, ``response``, ``source``).

Its prompts carry Alpaca-style framing around the instruction::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction
    <instruction>

    ### Response

The markers come with or without a colon.  The Mistral template supplies its own framing, so we
strip this one and keep the instruction (plus an ``### Input`` section, if any, joined with a blank
line as in :mod:`~finetune.data.formats.alpaca`).  Prompts without the framing are used as they
are, stripped.  ``source`` is only read by ``source_filter``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from finetune.data.conversation import Conversation
from finetune.data.formats import RowError, text_field

COLUMNS = ("prompt", "response", "source")
REQUIRED = ("prompt", "response")

_FRAMED = re.compile(
    r"""\A\s*
    (?:Below\ is\ an\ instruction\b.*?)?          # optional preamble sentence(s)
    \#{2,}[ \t]*Instruction[ \t]*:?[ \t]*\n?      # ### Instruction / ### Instruction:
    (?P<body>.*?)
    \#{2,}[ \t]*Response[ \t]*:?\s*\Z             # ### Response / ### Response: at the very end
    """,
    re.DOTALL | re.IGNORECASE | re.VERBOSE,
)
_INPUT = re.compile(r"^\#{2,}[ \t]*Input[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)


def instruction(prompt: str) -> str:
    """The instruction inside an instruct-v3 prompt; the prompt itself (stripped) when unframed."""
    match = _FRAMED.match(prompt)
    if not match:
        return prompt.strip()
    parts = _INPUT.split(match.group("body"), maxsplit=1)
    return "\n\n".join(part.strip() for part in parts if part.strip())


def parse(row: Mapping[str, Any]) -> Conversation:
    """One user turn (the instruction) and one assistant turn (the response, stripped)."""
    user = instruction(text_field(row, "prompt", what="prompt"))
    if not user:
        raise RowError("prompt", "the prompt holds only the instruction framing, no instruction")
    response = text_field(row, "response", what="response").strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
