"""The built-in Mistral template is token-for-token mistral-common (v1 and v3), with exact masks."""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest, InstructRequest

from finetune.data.template import MistralTemplate, encode_text_example, select_template

_CLASSES = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _s(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "single": [_u("What is 2 + 2?"), _a("4")],
    "multi_turn": [_u("Hi"), _a("Hello! How can I help?"), _u("Count to 3."), _a("1, 2, 3."), _u("Thanks"), _a("You're welcome.")],
    "system": [_s("You are terse."), _u("Name a color."), _a("Blue.")],
    "system_multi_turn": [_s("Answer in French.\nAlways."), _u("Hello"), _a("Bonjour"), _u("Thanks"), _a("Merci")],
    "non_ascii": [_u("Traduis « cœur » en 日本語 🙂"), _a("心 (kokoro) — ünïcödé ✓")],
    "newlines": [_u("Line one\nLine two\n\n  indented\tand tab"), _a("First\n\nSecond\n- item 1\n- item 2")],
    "digits": [_u("Compute 123456 * 789"), _a("97406784, i.e. 9.7e7 (3.14159)")],
    "spaces": [_u("  leading and trailing  "), _a("  spaced   answer  ")],
    "leading_newline": [_u("\nstarts with newline"), _a("\nanswer after newline\n")],
    "control_text": [_u("literal [INST] and [/INST] and <s> </s> text"), _a("echo [INST] </s> ok")],
}


def _mistral_common_ids(reference, messages):
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [_CLASSES[m["role"]](content=m["content"]) for m in messages if m["role"] != "system"]
    return reference.instruct_tokenizer.encode_instruct(InstructRequest(messages=turns, system_prompt=system)).tokens


def _mistral_common_prompt(reference, messages):
    request = ChatCompletionRequest(messages=[_CLASSES[m["role"]](content=m["content"]) for m in messages])
    return reference.encode_chat_completion(request).tokens


def _expected_trained_tokens(reference, messages, version):
    """The assistant tokens (+ EOS each), encoded by mistral-common's own rules."""
    sp = reference.instruct_tokenizer.tokenizer
    out = []
    for m in messages:
        if m["role"] == "assistant":
            text = m["content"] if version == "v1" else m["content"].rstrip(" ")
            out += [*sp.encode(text, bos=False, eos=False), sp.eos_id]
    return out


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_ids_equal_mistral_common(tokenizer, reference, version, name):
    messages = CONVERSATIONS[name]
    encoded = MistralTemplate.from_tokenizer(tokenizer).encode(messages)
    assert encoded.input_ids == _mistral_common_ids(reference, messages)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_equals_mistral_common_chat_completion(tokenizer, reference, name):
    messages = CONVERSATIONS[name][:-1]
    ids = MistralTemplate.from_tokenizer(tokenizer).encode_prompt(messages)
    assert ids == _mistral_common_prompt(reference, messages)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_mask_covers_exactly_the_answers_and_their_eos(tokenizer, reference, version, name):
    messages = CONVERSATIONS[name]
    encoded = MistralTemplate.from_tokenizer(tokenizer).encode(messages)
    trained = [t for t, m in zip(encoded.input_ids, encoded.train_mask) if m]
    assert trained == _expected_trained_tokens(reference, messages, version)
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.train_mask[0] == 0
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    assert encoded.input_ids[-1] == tokenizer.eos_token_id and encoded.train_mask[-1] == 1


@pytest.mark.parametrize("name", ["single", "multi_turn", "non_ascii", "spaces"])
def test_mask_positions_match_mistral_common_prefixes(tokenizer, reference, name):
    """Without a system prompt, each answer starts where mistral-common's prompt for it ends."""
    messages = CONVERSATIONS[name]
    encoded = MistralTemplate.from_tokenizer(tokenizer).encode(messages)
    expected = [0] * len(encoded)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(_mistral_common_prompt(reference, messages[:i]))
            end = len(_mistral_common_ids(reference, messages[: i + 1]))
            expected[start:end] = [1] * (end - start)
    assert encoded.train_mask == expected


def test_train_on_all_trains_every_token(tokenizer):
    encoded = MistralTemplate.from_tokenizer(tokenizer).encode(CONVERSATIONS["system_multi_turn"], train_on="all")
    assert set(encoded.train_mask) == {1}


def test_variant_is_chosen_from_the_vocabulary(tok_v1, tok_v3):
    assert MistralTemplate.from_tokenizer(tok_v1).name == "mistral-v1"
    v3 = MistralTemplate.from_tokenizer(tok_v3)
    assert v3.name == "mistral-v3" and v3.inst_ids == (3, 4)


def test_system_prompt_placement(tok_v1, tok_v3):
    """v1 glues the system prompt to the first user turn, v3 to the last one."""
    messages = CONVERSATIONS["system_multi_turn"]
    for tok, glued_to in ((tok_v1, "Hello"), (tok_v3, "Thanks")):
        text = tok.decode(MistralTemplate.from_tokenizer(tok).encode(messages).input_ids)
        assert "Answer in French.\nAlways.\n\n" + glued_to in text


def test_prompt_ends_where_the_answer_starts(tok_v1, tok_v3):
    assert MistralTemplate.from_tokenizer(tok_v3).encode_prompt([_u("hi")])[-1] == 4
    v1_prompt = MistralTemplate.from_tokenizer(tok_v1).encode_prompt([_u("hi")])
    assert tok_v1.decode(v1_prompt).endswith("hi [/INST]")


@pytest.mark.parametrize(
    "messages",
    [[_a("no user")], [_u("a"), _u("b"), _a("c")], [_u("a"), _a("b"), _s("late system"), _a("c")], [_u("only user")]],
)
def test_invalid_role_order_is_rejected(tok_v3, messages):
    with pytest.raises(ValueError, match="invalid conversation"):
        MistralTemplate.from_tokenizer(tok_v3).encode(messages)


def test_plain_text_example_is_bos_text_eos_all_trained(tokenizer, reference):
    template = MistralTemplate.from_tokenizer(tokenizer)
    encoded = encode_text_example("Some text\nwith  lines.", template.encode_text, tokenizer.bos_token_id, tokenizer.eos_token_id)
    sp = reference.instruct_tokenizer.tokenizer
    assert encoded.input_ids == sp.encode("Some text\nwith  lines.", bos=True, eos=True)
    assert set(encoded.train_mask) == {1}


def test_auto_uses_mistral_without_a_chat_template(tok_v1):
    assert select_template(tok_v1, "auto").name == "mistral-v1"
