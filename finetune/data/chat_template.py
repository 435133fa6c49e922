"""The tokenizer's own Jinja chat template as a :class:`~finetune.data.template.Template`.

The ids are what ``apply_chat_template(..., tokenize=True)`` gives at inference: the whole
conversation is rendered once and tokenized once.  The loss mask comes from *prefix rendering*:
for the assistant message ``i``, ``render(messages[:i], add_generation_prompt=True)`` is the text
before the answer and ``render(messages[:i+1])`` the text through it, so the characters in between
(the answer and whatever end-of-turn marker the template writes, EOS included) are trained.  Tokens
are assigned to that character span by their offsets.

This only works when the template is *prefix-stable*: rendering a shorter conversation must give a
prefix of rendering the longer one.  Templates that move the system prompt to the last user turn
(Mistral's own v0.3 template does) are not; those raise a :class:`FinetuneError` that points to
``data.template: mistral``, which is exact anyway.
"""

from __future__ import annotations

from finetune.data.conversation import Message, check_conversation
from finetune.data.template import Encoded, TrainOn
from finetune.errors import FinetuneError

_USE_MISTRAL = "Set `data.template: mistral` to use the built-in Mistral format (token-exact with mistral-common)."


class ChatTemplate:
    """Render with the tokenizer's Jinja template; mask by prefix rendering (see module docstring)."""

    name = "chat_template"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos_token = tokenizer.bos_token
        self.bos_id = tokenizer.bos_token_id

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "ChatTemplate":
        if not getattr(tokenizer, "chat_template", None):
            raise FinetuneError(
                "data.template is chat_template, but the tokenizer has no chat template "
                "(no chat_template in tokenizer_config.json or chat_template.jinja).",
                hint=_USE_MISTRAL,
            )
        return cls(tokenizer)

    def render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        """The template's text for ``messages``; template errors become a FinetuneError."""
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as err:
            raise FinetuneError(
                f"The tokenizer's chat template refused a conversation: {err}.", hint=_USE_MISTRAL
            ) from err

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets of ``text``, with exactly one BOS in front.

        The template usually writes ``<s>`` itself, so the tokenizer must not add another; when it
        does not, we add the BOS id.
        """
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded.input_ids), [tuple(o) for o in encoded.offset_mapping]
        if self.bos_id is not None and not (ids and ids[0] == self.bos_id):
            ids, offsets = [self.bos_id, *ids], [(0, 0), *offsets]
        return ids, offsets

    def _answer_spans(self, messages: list[Message], full: str) -> list[tuple[int, int]]:
        """Character spans of ``full`` that belong to each assistant turn."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1], add_generation_prompt=False)
            if not (through.startswith(before) and full.startswith(through)):
                raise FinetuneError(
                    "The tokenizer's chat template is not prefix-stable: rendering the conversation up to "
                    f"assistant message {i} is not a prefix of rendering the whole conversation (it moves "
                    "text such as the system prompt between turns), so the loss mask of each answer "
                    "cannot be derived.",
                    hint=_USE_MISTRAL,
                )
            spans.append((len(before), len(through)))
        return spans

    def encode(self, messages: list[Message], train_on: TrainOn = "responses") -> Encoded:
        """Ids and loss mask of a training conversation; a token is trained when it ends inside an answer."""
        check_conversation(messages, ends_with="assistant")
        full = self.render(messages, add_generation_prompt=False)
        ids, offsets = self._tokenize(full)
        if train_on == "all":
            return Encoded(ids, [1] * len(ids))
        spans = self._answer_spans(messages, full)
        mask = [int(end > start and any(lo < end <= hi for lo, hi in spans)) for start, end in offsets]
        return Encoded(ids, mask)

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Ids of a generation prompt, rendered with the template's generation prompt."""
        check_conversation(messages, ends_with="user")
        return self._tokenize(self.render(messages, add_generation_prompt=True))[0]
