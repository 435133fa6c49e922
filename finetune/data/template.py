"""Prompt templates: a conversation -> token ids plus a per-token loss mask.

Two implementations of one small interface (:class:`Template`):

* :class:`MistralTemplate` builds ids segment by segment with mistral-common's rules, so ids are
  token-for-token those of ``MistralTokenizer.v1()`` / ``.v3()`` and the mask is exact by
  construction (no offsets, no re-tokenising the rendered string).
* :class:`ChatTemplate` (chat_template.py) uses the tokenizer's own Jinja template.

:func:`select_template` picks one from ``data.template``.  Every template exposes ``encode`` for a
training conversation (ends with an assistant turn) and ``encode_prompt`` for a generation prompt
(ends with a user turn; ids end where the model should start answering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from finetune.data.conversation import Message, check_conversation, split_system
from finetune.data.text_encoder import TextEncoder, text_encoder

TrainOn = Literal["responses", "all"]


@dataclass(frozen=True)
class Encoded:
    """Token ids and the matching loss mask (1 = the token is a training target)."""

    input_ids: list[int]
    train_mask: list[int]

    def __post_init__(self):
        if len(self.input_ids) != len(self.train_mask):
            raise ValueError(f"{len(self.input_ids)} ids but {len(self.train_mask)} mask entries")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        """How many tokens carry loss."""
        return sum(self.train_mask)

    def truncated(self, max_length: int) -> "Encoded":
        """The first ``max_length`` tokens."""
        return Encoded(self.input_ids[:max_length], self.train_mask[:max_length])


class Template(Protocol):
    """What the data path, generation eval and chat need from a prompt format."""

    name: str

    def encode(self, messages: list[Message], train_on: TrainOn = "responses") -> Encoded: ...

    def encode_prompt(self, messages: list[Message]) -> list[int]: ...


class _Builder:
    """Accumulates (ids, mask) segment by segment."""

    def __init__(self):
        self.ids: list[int] = []
        self.mask: list[int] = []

    def add(self, ids: list[int], trained: bool) -> None:
        self.ids.extend(ids)
        self.mask.extend([int(trained)] * len(ids))

    def build(self) -> Encoded:
        return Encoded(self.ids, self.mask)


class MistralTemplate:
    """Mistral's ``[INST]`` format with mistral-common's exact rules.

    * v1 (7B v0.1, ``[INST]`` is plain text): user turn = encode(f"[INST] {content} [/INST]"); the
      system prompt becomes ``system + "\\n\\n" + content`` of the FIRST user turn; assistant turn =
      encode(content) + EOS.
    * v2/v3 (``[INST]`` / ``[/INST]`` are control tokens): user turn = [INST] + encode(content) +
      [/INST]; the system prompt is prepended to the LAST user turn; assistant turn =
      encode(content.rstrip(" ")) + EOS.

    One BOS starts the sequence.  Loss falls on assistant content and its EOS.
    """

    def __init__(self, encode_text: TextEncoder, bos_id: int, eos_id: int, inst_ids: tuple[int, int] | None):
        self.encode_text = encode_text
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.inst_ids = inst_ids
        self.name = "mistral-v3" if inst_ids else "mistral-v1"

    @classmethod
    def from_tokenizer(cls, tokenizer, encode_text: TextEncoder | None = None) -> "MistralTemplate":
        """Choose v1 or v2/v3 rules from whether ``[INST]`` is a single control token."""
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the mistral template needs a tokenizer with BOS and EOS tokens")
        return cls(
            encode_text or text_encoder(tokenizer),
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            control_inst_ids(tokenizer),
        )

    def _user(self, content: str) -> list[int]:
        if self.inst_ids is None:
            return self.encode_text(f"[INST] {content} [/INST]")
        begin, end = self.inst_ids
        return [begin, *self.encode_text(content), end]

    def _assistant(self, content: str) -> list[int]:
        text = content if self.inst_ids is None else content.rstrip(" ")
        return [*self.encode_text(text), self.eos_id]

    def _build(self, messages: list[Message], train_on: TrainOn) -> Encoded:
        system, turns = split_system(messages)
        users = [i for i, m in enumerate(turns) if m["role"] == "user"]
        system_turn = users[0] if self.inst_ids is None else users[-1]
        prompt_trained = train_on == "all"
        out = _Builder()
        out.add([self.bos_id], prompt_trained)
        for i, message in enumerate(turns):
            if message["role"] == "assistant":
                out.add(self._assistant(message["content"]), True)
                continue
            content = message["content"]
            if system and i == system_turn:
                content = f"{system}\n\n{content}"
            out.add(self._user(content), prompt_trained)
        return out.build()

    def encode(self, messages: list[Message], train_on: TrainOn = "responses") -> Encoded:
        """Ids and loss mask of a training conversation (ending with an assistant turn)."""
        check_conversation(messages, ends_with="assistant")
        return self._build(messages, train_on)

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Ids of a generation prompt (ending with a user turn): the model continues after ``[/INST]``."""
        check_conversation(messages, ends_with="user")
        return self._build(messages, "responses").input_ids


def control_inst_ids(tokenizer) -> tuple[int, int] | None:
    """The ids of ``[INST]`` and ``[/INST]`` when both are single control tokens (v2/v3 vocabularies)."""
    ids = []
    for token in ("[INST]", "[/INST]"):
        encoded = tokenizer(token, add_special_tokens=False).input_ids
        if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
            return None
        ids.append(encoded[0])
    return ids[0], ids[1]


def encode_text_example(text: str, encode_text: TextEncoder, bos_id: int | None, eos_id: int | None) -> Encoded:
    """A plain language-modelling example: BOS + text + EOS, every token trained."""
    ids = [*([bos_id] if bos_id is not None else []), *encode_text(text), *([eos_id] if eos_id is not None else [])]
    return Encoded(ids, [1] * len(ids))


def select_template(
    tokenizer,
    choice: Literal["auto", "mistral", "chat_template"] = "auto",
    encode_text: TextEncoder | None = None,
) -> Template:
    """The template ``data.template`` asks for: auto = the tokenizer's chat template if it has one.

    ``encode_text`` lets a caller that already built the text encoder share it.
    """
    from finetune.data.chat_template import ChatTemplate

    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if choice == "chat_template" or (choice == "auto" and has_chat_template):
        return ChatTemplate.from_tokenizer(tokenizer)
    return MistralTemplate.from_tokenizer(tokenizer, encode_text)
