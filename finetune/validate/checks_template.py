"""Tokenizer and prompt-template checks against mistral-common, the ground truth of Mistral's format.

A multi-turn conversation with a system prompt is encoded by our template (the one training would
use: the built-in Mistral template for a model folder, the recipe's ``data.template`` for a recipe or
run) and by mistral-common's ``MistralTokenizer`` of the same vocabulary: ``.v1()`` for 32000 tokens
(``[INST]`` is plain text), ``.v3()`` for 32768 (``[INST]`` / ``[/INST]`` are control tokens).

* ``template.bos``: exactly one BOS, first (a template that writes ``<s>`` *and* a tokenizer that adds
  one is the classic double BOS), and the tokenizer adds exactly one to plain text;
* ``template.eos``: the tokenizer's EOS is Mistral's, every answer ends with it, and the model's
  config stops on it (otherwise generation never ends);
* ``template.inst``: the ids are token-for-token mistral-common's (spaces around ``[INST]``, system
  prompt placement, the EOS after each answer).

Each row function takes plain ids so that a test can feed it a deliberately broken encoder.
"""

from __future__ import annotations

from typing import Any, Callable

from finetune.errors import FinetuneError

from .report import CheckResult

CONVERSATION: list[dict[str, str]] = [
    {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy? Answer with the city only."},
    {"role": "assistant", "content": "Rome."},
]

_REFERENCES = {32000: "v1", 32768: "v3"}


def reference_tokenizer(vocab_size: int):
    """mistral-common's tokenizer for a vocabulary size, or None when Mistral has none of that size."""
    version = _REFERENCES.get(vocab_size)
    if version is None:
        return None
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return getattr(MistralTokenizer, version)()


def reference_ids(reference, messages: list[dict[str, str]]) -> list[int]:
    """mistral-common's ids for a training conversation (system prompt passed the way it expects)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest

    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    classes = {"user": UserMessage, "assistant": AssistantMessage}
    turns = [classes[m["role"]](content=m["content"]) for m in messages if m["role"] != "system"]
    request = InstructRequest(messages=turns, system_prompt=system)
    return list(reference.instruct_tokenizer.encode_instruct(request).tokens)


def encode_with(template: Any, messages: list[dict[str, str]]) -> list[int]:
    """Ids from a template object (``encode(messages)`` -> Encoded or ids) or a plain callable."""
    encoded = template.encode(messages) if hasattr(template, "encode") else template(messages)
    return list(getattr(encoded, "input_ids", encoded))


def check_bos(ids: list[int], bos_id: int, plain_ids: list[int] | None = None, reference_bos: int | None = None) -> CheckResult:
    """One BOS, at position 0, in the template's ids (and in the tokenizer's ids for plain text)."""
    count = ids.count(bos_id)
    problems = []
    if count != 1 or not ids or ids[0] != bos_id:
        problems.append(f"the conversation has {count} BOS (id {bos_id})" + ("" if ids and ids[0] == bos_id else ", not first"))
    if plain_ids is not None and (plain_ids.count(bos_id) != 1 or plain_ids[0] != bos_id):
        problems.append(f"the tokenizer puts {plain_ids.count(bos_id)} BOS on plain text")
    if reference_bos is not None and reference_bos != bos_id:
        problems.append(f"BOS id {bos_id} is not Mistral's {reference_bos}")
    ok = not problems
    detail = "; ".join(problems) + (": a second BOS shifts every position the model was trained on" if count > 1 else "")
    if ok:
        detail = f"exactly one BOS (id {bos_id}) at position 0 of the conversation" + (
            " and of tokenized plain text" if plain_ids is not None else "")
    return CheckResult("template.bos", ok, count, "== 1, first", detail)


def check_eos(ids: list[int], eos_id: int, answers: int, reference_eos: int | None = None,
              config_eos: Any = None) -> CheckResult:
    """Every answer ends with EOS, the EOS id is Mistral's, and the model config stops on it."""
    problems = []
    if ids.count(eos_id) != answers or not ids or ids[-1] != eos_id:
        problems.append(f"{ids.count(eos_id)} EOS (id {eos_id}) for {answers} answers" +
                        ("" if ids and ids[-1] == eos_id else ", the last answer has none"))
    if reference_eos is not None and reference_eos != eos_id:
        problems.append(f"EOS id {eos_id} is not Mistral's {reference_eos}")
    if config_eos is not None:
        stops = config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]
        if eos_id not in stops:
            problems.append(f"the model config stops on {config_eos}, not on the tokenizer's EOS {eos_id}: "
                            "generation would never end")
    ok = not problems
    detail = "; ".join(problems) if problems else f"each of the {answers} answers ends with EOS (id {eos_id}); the config stops on it"
    return CheckResult("template.eos", ok, eos_id, "Mistral's EOS after each answer", detail)


def check_inst(ids: list[int], expected: list[int], piece: Callable[[int], str] | None = None,
               template_name: str = "template") -> CheckResult:
    """The template's ids equal mistral-common's, token for token."""
    if ids == expected:
        return CheckResult("template.inst", True, f"{len(ids)} tokens", "identical to mistral-common",
                           f"{template_name}: system + 2-turn [INST] conversation, {len(ids)} ids equal mistral-common's")
    k = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
    show = piece or str

    def around(seq: list[int]) -> str:
        return " ".join(repr(show(t)) for t in seq[max(0, k - 2) : k + 3]) or "(end)"

    detail = (f"{template_name}: first difference at token {k} of {len(expected)}: ours {around(ids)} vs "
              f"mistral-common {around(expected)} (ours {len(ids)} tokens)")
    return CheckResult("template.inst", False, f"differs at {k}", "identical to mistral-common", detail)


def template_checks(subject, template: Any = None) -> list[CheckResult]:
    """The three template rows for a subject; ``template`` overrides the one training would use."""
    tokenizer = subject.tokenizer
    reference = reference_tokenizer(subject.hf_config.get("vocab_size"))
    if template is None:
        from finetune.data.template import select_template

        try:
            template = select_template(tokenizer, subject.template_choice)
        except (FinetuneError, ValueError) as exc:
            return [CheckResult("template.inst", False, "no template", "identical to mistral-common",
                                f"data.template {subject.template_choice!r} cannot be built: {exc}")]
    name = getattr(template, "name", type(template).__name__)
    try:
        ids = encode_with(template, CONVERSATION)
    except (FinetuneError, ValueError) as exc:
        return [CheckResult("template.inst", False, "encode failed", "identical to mistral-common",
                            f"{name} refused a system + multi-turn conversation: {exc}")]
    sp = reference.instruct_tokenizer.tokenizer if reference is not None else None
    plain = tokenizer("Hello world").input_ids
    answers = sum(m["role"] == "assistant" for m in CONVERSATION)
    rows = [
        check_bos(ids, tokenizer.bos_token_id, plain, sp.bos_id if sp else None),
        check_eos(ids, tokenizer.eos_token_id, answers, sp.eos_id if sp else None,
                  subject.hf_config.get("eos_token_id")),
    ]
    if reference is None:
        rows.append(CheckResult("template.inst", True, "n/a", "identical to mistral-common",
                                f"skipped: mistral-common has no tokenizer of vocab {subject.hf_config.get('vocab_size')}"))
    else:
        rows.append(check_inst(ids, reference_ids(reference, CONVERSATION), _piece(tokenizer), name))
    return rows


def _piece(tokenizer) -> Callable[[int], str]:
    return lambda i: tokenizer.convert_ids_to_tokens(int(i))
