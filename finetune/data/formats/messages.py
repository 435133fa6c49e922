"""``messages``: column ``messages`` holding a list of ``{"role", "content"}`` objects.

The layout of mistral-finetune, TRL and OpenAI chat data: an optional leading ``system`` message,
then ``user`` / ``assistant`` strictly alternating, starting with ``user`` and ending with
``assistant``.  Every assistant turn is trained.  A JSON string holding the list (CSV exports) is
decoded.  Extra keys in a message (``name``, ...) are
ignored; other roles (``tool``, ShareGPT's ``human``/``gpt``) are errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from finetune.data.conversation import ROLES, Conversation, order_problem
from finetune.data.formats import RowError, describe, missing_column

COLUMNS = ("messages",)
REQUIRED = ("messages",)

_SHAPE = 'each message must be an object like {"role": "user", "content": "..."}'


def parse_message(index: int, item: Any, column: str = "messages") -> dict[str, str]:
    """One validated message of the list in ``column``; the error names ``column[index]``."""
    where = f"{column}[{index}]"
    if not isinstance(item, Mapping):
        raise RowError(column, f"{where} is {describe(item)}; {_SHAPE}")
    if "role" not in item or "content" not in item:
        keys = ", ".join(map(str, item)) or "none"
        hint = " (ShareGPT-style from/value data must be converted to role/content)" if "from" in item else ""
        raise RowError(column, f"{where} has keys {keys}; {_SHAPE}{hint}")
    role, content = item["role"], item["content"]
    if role not in ROLES:
        raise RowError(column, f"{where} has role {role!r}; roles must be one of {', '.join(ROLES)}")
    if content is None:
        raise RowError(column, f"{where} ({role}) has null content")
    if not isinstance(content, str):
        raise RowError(column, f"{where} ({role}) content must be text, got {describe(content)}")
    if not content.strip():
        raise RowError(column, f"{where} ({role}) content is empty" + (" (whitespace only)" if content else ""))
    return {"role": role, "content": content}


def _decode_json_string(value: Any) -> Any:
    """CSV and some parquet exports store the list as a JSON string; decode it when it is one."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError("messages", f"the value looks like a JSON list but is not valid JSON ({err.msg})") from None
    return value


def parse(row: Mapping[str, Any]) -> Conversation:
    """The validated conversation; wrong shapes and role orders are errors naming the message index."""
    if "messages" not in row:
        raise missing_column(row, "messages")
    items = _decode_json_string(row["messages"])
    if items is None:
        raise RowError("messages", "the value is null")
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise RowError("messages", f"expected a list of messages, got {describe(items)}")
    messages = [parse_message(i, item) for i, item in enumerate(items)]
    problem = order_problem(messages, ends_with="assistant")
    if problem:
        raise RowError("messages", problem)
    return messages
