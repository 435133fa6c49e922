"""Conversations: the one shape every chat format is parsed into and every template encodes.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts: an optional leading ``system``
message, then ``user`` / ``assistant`` turns strictly alternating, starting with ``user``.  A
training conversation ends with an ``assistant`` turn; a prompt for generation ends with ``user``.
Plain-text (language-modelling) examples are bare strings; preference data (DPO) are
:class:`PreferencePair` objects.  An :data:`Example` is any of the three.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt conversation (ending with a user turn) and two answers to it, the preferred one first.

    What the ``preference`` format parses every row shape into, and what DPO trains on.
    """

    prompt: Conversation
    chosen: str
    rejected: str

    def with_system_prompt(self, system_prompt: str | None) -> "PreferencePair":
        """The pair with ``system_prompt`` in front of its prompt (unless it has its own)."""
        return replace(self, prompt=with_system_prompt(self.prompt, system_prompt))


Example = Union[Conversation, str, PreferencePair]

ROLES: tuple[str, ...] = ("system", "user", "assistant")


def order_problem(messages: list[Message], *, ends_with: Role = "assistant") -> str | None:
    """Why ``messages`` is not a valid conversation, or None when it is.

    The rule is Mistral's: optional system first, then user/assistant alternating from user, and
    the last message has role ``ends_with``.  The text names the offending index so that a data
    error can point at ``messages[i]``.
    """
    if not messages:
        return "the conversation has no messages"
    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        return "the conversation has only a system message"
    for i, message in enumerate(messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if message["role"] != expected:
            if message["role"] == "system":
                rule = "only the first message may be a system message"
            else:
                rule = "roles must alternate user/assistant, starting with user"
            return f"messages[{i}] has role {message['role']!r} where {expected!r} was expected ({rule})"
    if messages[-1]["role"] != ends_with:
        kind = "training" if ends_with == "assistant" else "prompt"
        return f"the last message has role {messages[-1]['role']!r}; a {kind} conversation must end with {ends_with!r}"
    return None


def check_conversation(messages: list[Message], *, ends_with: Role = "assistant") -> None:
    """Raise ValueError when ``messages`` breaks the role order (a caller bug, not a data error)."""
    problem = order_problem(messages, ends_with=ends_with)
    if problem:
        raise ValueError(f"invalid conversation: {problem}")


def split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """The system prompt (or None) and the user/assistant turns that follow it."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return None, list(messages)


def with_system_prompt(messages: Conversation, system_prompt: str | None) -> Conversation:
    """``messages`` with ``system_prompt`` in front, unless it has its own system message already."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
