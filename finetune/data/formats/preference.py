"""``preference``: a prompt and two answers to it, ``chosen`` (preferred) and ``rejected`` — DPO data.

Three row shapes, the ones TRL and the public preference data sets use; each row may take any of them:

* **strings** — ``prompt``, ``chosen``, ``rejected`` are text: one user turn, two answers;
* **explicit prompt, messages** — ``prompt`` is a message list ending with a user turn (optional
  leading system message, earlier turns allowed); ``chosen`` / ``rejected`` are lists holding one
  assistant message each (or plain strings);
* **implicit prompt** — no ``prompt`` column (or null): ``chosen`` and ``rejected`` are whole
  conversations that share every message but the final assistant turn, which is what differs.

Whatever the shape, the result is a :class:`~finetune.data.conversation.PreferencePair`.  A pair whose
two answers are identical is an error, not a skipped row: it carries no preference (its DPO gradient
is zero) and almost always means a column was mapped twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune.data.conversation import Conversation, PreferencePair, order_problem
from finetune.data.formats import RowError, describe, missing_column, text_field
from finetune.data.formats.messages import parse_message

COLUMNS = ("chosen", "rejected", "prompt")
REQUIRED = ("chosen", "rejected")

_IMPLICIT = (
    "Without a prompt column, chosen and rejected must be whole conversations (message lists) that share "
    "every message but the last assistant turn."
)


def _message_list(column: str, value: Any) -> Conversation:
    """The validated messages of a list-valued column."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise RowError(column, f"expected a list of messages, got {describe(value)}")
    return [parse_message(i, item, column) for i, item in enumerate(value)]


def _prompt(value: Any) -> Conversation:
    """The prompt column as a conversation ending with a user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": text_field({"prompt": value}, "prompt", what="prompt")}]
    messages = _message_list("prompt", value)
    problem = order_problem(messages, ends_with="user")
    if problem:
        raise RowError("prompt", problem)
    return messages


def _answer(column: str, value: Any) -> str:
    """An answer column: text, or a list holding exactly one assistant message."""
    if isinstance(value, str) or value is None:
        return text_field({column: value}, column, what=f"{column} answer")
    messages = _message_list(column, value)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "none"
        raise RowError(
            column,
            f"with an explicit prompt, {column} must hold exactly one assistant message (got roles: {roles})",
            hint="Put earlier turns in the prompt column, or drop the prompt column and give whole "
            "conversations in chosen and rejected (implicit prompt).",
        )
    return messages[0]["content"]


def _conversation(column: str, value: Any) -> Conversation:
    """An implicit-prompt column: a whole conversation ending with an assistant turn."""
    if isinstance(value, str):
        raise RowError(column, f"is text but the row has no prompt column. {_IMPLICIT}")
    messages = _message_list(column, value)
    problem = order_problem(messages, ends_with="assistant")
    if problem:
        raise RowError(column, problem)
    return messages


def _implicit(chosen_value: Any, rejected_value: Any) -> PreferencePair:
    """Split two whole conversations into their shared prompt and differing final answers."""
    chosen = _conversation("chosen", chosen_value)
    rejected = _conversation("rejected", rejected_value)
    if len(chosen) != len(rejected):
        raise RowError(
            "rejected",
            f"has {len(rejected)} messages and chosen has {len(chosen)}. {_IMPLICIT}",
        )
    for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])):
        if a != b:
            raise RowError(
                "rejected",
                f"differs from chosen at messages[{i}] ({b['role']}), before the final answer: the two "
                f"conversations have no common prompt. {_IMPLICIT}",
            )
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


def parse(row: Mapping[str, Any]) -> PreferencePair:
    """The pair of one row, in any of the three shapes (see the module docstring)."""
    for column in REQUIRED:
        if column not in row:
            raise missing_column(row, column)
    if row.get("prompt") is None:
        pair = _implicit(row["chosen"], row["rejected"])
    else:
        prompt = _prompt(row["prompt"])
        pair = PreferencePair(prompt, _answer("chosen", row["chosen"]), _answer("rejected", row["rejected"]))
    if pair.chosen == pair.rejected:
        raise RowError(
            "rejected",
            "is identical to chosen: the pair expresses no preference (its DPO gradient is zero)",
            hint="Give two different answers, or remove the row; check that chosen and rejected are not mapped "
            "to the same column.",
        )
    return pair
