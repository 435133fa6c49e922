"""The tokenizer's own chat template: prefix-rendered masks, one BOS, and a clear refusal when the
template is not prefix-stable."""

from __future__ import annotations

import pytest

from finetune.data.chat_template import ChatTemplate
from finetune.data.template import MistralTemplate, select_template
from finetune.errors import FinetuneError

# A prefix-stable Mistral-style template that writes <s> itself (the tokenizer must not add one).
STABLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# The same without <s>: the BOS id must be added once.
NO_BOS = STABLE.replace("{{ bos_token }}", "")
# System prompt glued to the LAST user message, like Mistral's v0.3 template: not prefix-stable.
SYSTEM_ON_LAST_USER = (
    "{{ bos_token }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% set turns = messages[1:] if system else messages %}"
    "{% set last_user = (turns | selectattr('role', 'equalto', 'user') | list | length) %}{% set ns = namespace(n=0) %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}{% set ns.n = ns.n + 1 %}[INST] "
    "{% if system and ns.n == last_user %}{{ system }}\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
GENERATION_HEADER = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<user>{{ m['content'] }}</user>"
    "{% else %}<bot>{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
)

MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Count"},
    {"role": "assistant", "content": "1 2 3"},
]


def _with_template(fresh_tokenizer, version, template):
    tok = fresh_tokenizer(version)
    tok.chat_template = template
    return tok


def _trained_text(tok, encoded):
    return tok.decode([t for t, m in zip(encoded.input_ids, encoded.train_mask) if m])


@pytest.mark.parametrize("template", [STABLE, NO_BOS])
def test_masks_come_from_prefix_rendering_and_bos_appears_once(fresh_tokenizer, version, template):
    tok = _with_template(fresh_tokenizer, version, template)
    encoded = ChatTemplate.from_tokenizer(tok).encode(MULTI)
    assert encoded.input_ids[0] == tok.bos_token_id and encoded.input_ids.count(tok.bos_token_id) == 1
    assert encoded.train_mask[0] == 0
    trained = [t for t, m in zip(encoded.input_ids, encoded.train_mask) if m]
    assert trained.count(tok.eos_token_id) == 2 and encoded.input_ids[-1] == tok.eos_token_id
    assert "Hello there" in _trained_text(tok, encoded) and "1 2 3" in _trained_text(tok, encoded)
    assert "Count" not in _trained_text(tok, encoded) and "INST" not in _trained_text(tok, encoded)


def test_ids_are_what_apply_chat_template_tokenizes(fresh_tokenizer):
    tok = _with_template(fresh_tokenizer, "v3", STABLE)
    expected = tok.apply_chat_template(MULTI, tokenize=True, return_dict=False)
    assert ChatTemplate.from_tokenizer(tok).encode(MULTI).input_ids == list(expected)


def test_generation_header_is_not_trained(fresh_tokenizer):
    tok = _with_template(fresh_tokenizer, "v1", GENERATION_HEADER)
    template = ChatTemplate.from_tokenizer(tok)
    encoded = template.encode(MULTI)
    assert _trained_text(tok, encoded).count("<bot>") == 0
    prompt = template.encode_prompt(MULTI[:1])
    assert tok.decode(prompt).endswith("<bot>") and prompt.count(tok.bos_token_id) == 1


def test_not_prefix_stable_template_is_refused_with_the_fix(fresh_tokenizer):
    tok = _with_template(fresh_tokenizer, "v3", SYSTEM_ON_LAST_USER)
    messages = [{"role": "system", "content": "Be brief."}, *MULTI]
    with pytest.raises(FinetuneError, match="not prefix-stable") as err:
        ChatTemplate.from_tokenizer(tok).encode(messages)
    assert "data.template: mistral" in str(err.value)


def test_train_on_all(fresh_tokenizer):
    tok = _with_template(fresh_tokenizer, "v3", STABLE)
    assert set(ChatTemplate.from_tokenizer(tok).encode(MULTI, train_on="all").train_mask) == {1}


def test_selection(fresh_tokenizer, tok_v1):
    tok = _with_template(fresh_tokenizer, "v1", STABLE)
    assert isinstance(select_template(tok, "auto"), ChatTemplate)
    assert isinstance(select_template(tok, "mistral"), MistralTemplate)
    with pytest.raises(FinetuneError, match="no chat template"):
        select_template(tok_v1, "chat_template")


def test_template_exceptions_become_finetune_errors(fresh_tokenizer):
    tok = _with_template(fresh_tokenizer, "v1", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(FinetuneError, match="roles must alternate"):
        ChatTemplate.from_tokenizer(tok).encode(MULTI)
