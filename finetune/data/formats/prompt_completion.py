"""``prompt-completion``: columns ``prompt`` and ``completion`` (strings), one exchange per row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune.data.conversation import Conversation
from finetune.data.formats import text_field

COLUMNS = ("prompt", "completion")
REQUIRED = ("prompt", "completion")


def parse(row: Mapping[str, Any]) -> Conversation:
    """prompt -> user turn, completion -> assistant turn, both verbatim."""
    prompt = text_field(row, "prompt", what="prompt")
    completion = text_field(row, "completion", what="completion (the response)")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
