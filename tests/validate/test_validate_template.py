"""The template rows flag a deliberately broken encoder: a missing space, a double BOS, the system
prompt in the wrong turn, a missing EOS, a config that stops on the wrong id."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from finetune.data.template import MistralTemplate
from finetune.validate.checks_template import (
    CONVERSATION,
    check_bos,
    check_eos,
    check_inst,
    reference_ids,
    reference_tokenizer,
    template_checks,
)
from finetune.validate.target import resolve_target


@pytest.fixture(scope="module")
def tok_v1(tiny_mistral):
    return AutoTokenizer.from_pretrained(tiny_mistral)


@pytest.fixture(scope="module")
def tok_v3(tiny_mixtral):
    return AutoTokenizer.from_pretrained(tiny_mixtral)


class NoSpaceTemplate(MistralTemplate):
    """v1 user turns written "[INST]content [/INST]" (the space after [INST] missing)."""

    def _user(self, content):
        return self.encode_text(f"[INST]{content} [/INST]")


def test_good_templates_match_mistral_common(tok_v1, tok_v3):
    for tok, vocab in ((tok_v1, 32000), (tok_v3, 32768)):
        ids = MistralTemplate.from_tokenizer(tok).encode(CONVERSATION).input_ids
        row = check_inst(ids, reference_ids(reference_tokenizer(vocab), CONVERSATION))
        assert row.passed, row.detail


def test_missing_space_is_flagged_with_the_first_difference(tok_v1):
    ids = NoSpaceTemplate.from_tokenizer(tok_v1).encode(CONVERSATION).input_ids
    expected = reference_ids(reference_tokenizer(32000), CONVERSATION)
    row = check_inst(ids, expected, tok_v1.convert_ids_to_tokens)
    assert not row.passed
    k = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
    assert row.value == f"differs at {k}"
    assert "ours 'INST' ']' 'You'" in row.detail and "mistral-common 'INST' ']' '▁You'" in row.detail


def test_system_prompt_in_the_wrong_turn_v3(tok_v3):
    """v3 puts the system prompt in the LAST user turn; the v1 placement (first turn) is wrong there."""
    system, *turns = CONVERSATION
    moved = [dict(turns[0], content=f"{system['content']}\n\n{turns[0]['content']}"), *turns[1:]]
    ids = MistralTemplate.from_tokenizer(tok_v3).encode(moved).input_ids
    assert not check_inst(ids, reference_ids(reference_tokenizer(32768), CONVERSATION)).passed


def test_double_bos(tok_v1):
    ids = MistralTemplate.from_tokenizer(tok_v1).encode(CONVERSATION).input_ids
    assert check_bos(ids, tok_v1.bos_token_id).passed
    row = check_bos([tok_v1.bos_token_id, *ids], tok_v1.bos_token_id)
    assert not row.passed and row.value == 2 and "2 BOS" in row.detail


def test_eos_rules(tok_v1):
    ids = MistralTemplate.from_tokenizer(tok_v1).encode(CONVERSATION).input_ids
    eos = tok_v1.eos_token_id
    assert check_eos(ids, eos, answers=2, reference_eos=2, config_eos=2).passed
    assert not check_eos([i for i in ids if i != eos], eos, answers=2).passed  # EOS never trained
    row = check_eos(ids, eos, answers=2, config_eos=32000)
    assert not row.passed and "never end" in row.detail


def test_template_checks_with_a_broken_encoder(tiny_mistral):
    subject = resolve_target(tiny_mistral)

    def double_bos(messages):
        ids = MistralTemplate.from_tokenizer(subject.tokenizer).encode(messages).input_ids
        return [subject.tokenizer.bos_token_id, *ids]

    rows = {r.name: r for r in template_checks(subject, template=double_bos)}
    assert not rows["template.bos"].passed and not rows["template.inst"].passed
    assert rows["template.eos"].passed
    assert all(r.passed for r in template_checks(subject, template=NoSpaceTemplate.from_tokenizer(subject.tokenizer))
               if r.name != "template.inst")
