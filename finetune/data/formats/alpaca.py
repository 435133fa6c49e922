"""``alpaca``: columns ``instruction``, ``input`` (optional, may be empty) and ``output``.

The user turn is the instruction, followed by a blank line and the input when there is one; the
assistant turn is the output.  Content is kept verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune.data.conversation import Conversation
from finetune.data.formats import text_field

COLUMNS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")


def parse(row: Mapping[str, Any]) -> Conversation:
    """instruction (+ "\\n\\n" + input) -> user; output -> assistant."""
    user = text_field(row, "instruction", what="instruction")
    extra = text_field(row, "input", what="input", optional=True)
    if extra.strip():
        user = f"{user}\n\n{extra}"
    output = text_field(row, "output", what="output (the response)")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
