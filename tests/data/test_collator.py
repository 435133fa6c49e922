"""End to end per format: files on disk -> prepare_data -> TRL's collator -> labels.

The collator pads with the EOS id (pad == eos, as when a tokenizer has no pad token).  Labels must
be -100 exactly on prompt tokens and padding; every response token and its EOS must be trained;
each row has exactly one BOS.  Expected ids and masks come from mistral-common, not from our code.
"""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest, InstructRequest
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from finetune.data import prepare_data

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_CLASSES = {"user": UserMessage, "assistant": AssistantMessage}

# format -> (rows written to disk, the conversations mistral-common should see)
CASES = {
    "instruct-v3": (
        [
            {"prompt": f"{PREAMBLE}\n\n### Instruction\nName a prime.\n\n### Response\n", "response": "7", "source": "s"},
            {"prompt": "What is the capital of France?", "response": "Paris is the capital of France.", "source": "s"},
        ],
        [
            [("user", "Name a prime."), ("assistant", "7")],
            [("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France.")],
        ],
    ),
    "alpaca": (
        [
            {"instruction": "Translate to German.", "input": "Good night", "output": "Gute Nacht"},
            {"instruction": "Say yes.", "input": "", "output": "Yes."},
        ],
        [
            [("user", "Translate to German.\n\nGood night"), ("assistant", "Gute Nacht")],
            [("user", "Say yes."), ("assistant", "Yes.")],
        ],
    ),
    "prompt-completion": (
        [{"prompt": "2 + 2 =", "completion": "4"}, {"prompt": "List three fruits.", "completion": "Apple, pear, plum."}],
        [[("user", "2 + 2 ="), ("assistant", "4")], [("user", "List three fruits."), ("assistant", "Apple, pear, plum.")]],
    ),
    "messages": (
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": "Tell me a long fact."},
                          {"role": "assistant", "content": "Octopuses have three hearts and blue blood."}]},
            {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]},
        ],
        [
            [("user", "Hi"), ("assistant", "Hello!"), ("user", "Tell me a long fact."),
             ("assistant", "Octopuses have three hearts and blue blood.")],
            [("user", "Bye"), ("assistant", "Goodbye.")],
        ],
    ),
}


def _expected_chat(reference, turns):
    """(ids, mask) by mistral-common: each answer spans from its prompt's end to the next encode's end."""
    def msgs(ts):
        return [_CLASSES[role](content=content) for role, content in ts]

    ids = reference.instruct_tokenizer.encode_instruct(InstructRequest(messages=msgs(turns))).tokens
    mask = [0] * len(ids)
    for i, (role, _) in enumerate(turns):
        if role == "assistant":
            start = len(reference.encode_chat_completion(ChatCompletionRequest(messages=msgs(turns[:i]))).tokens)
            end = len(reference.instruct_tokenizer.encode_instruct(InstructRequest(messages=msgs(turns[: i + 1]))).tokens)
            mask[start:end] = [1] * (end - start)
    return ids, mask


def _check_batch(tokenizer, dataset, expected):
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    collator = DataCollatorForLanguageModeling(pad_token_id=eos, completion_only_loss=True)
    rows = [dataset[i] for i in range(len(dataset))]
    batch = collator(rows)
    assert len({len(r["input_ids"]) for r in rows}) > 1, "rows of different lengths, so padding is exercised"
    by_ids = {tuple(ids): mask for ids, mask in expected}
    for row, ids, labels, attention in zip(rows, batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = len(row["input_ids"])
        mask = by_ids[tuple(row["input_ids"])]  # token-exact with mistral-common
        assert row["completion_mask"] == mask
        want = [tok if m else -100 for tok, m in zip(row["input_ids"], mask)] + [-100] * (len(ids) - n)
        assert labels.tolist() == want
        assert ids[n:].tolist() == [eos] * (len(ids) - n) and attention.tolist() == [1] * n + [0] * (len(ids) - n)
        assert ids[:n].tolist().count(bos) == 1 and ids[0] == bos
        assert ids[n - 1] == eos and labels[n - 1] == eos  # the EOS is trained although pad == eos


@pytest.mark.parametrize("fmt", CASES)
def test_labels_per_chat_format(tokenizer, reference, write_jsonl, data_config, fmt):
    rows, conversations = CASES[fmt]
    prepared = prepare_data(data_config(write_jsonl(f"{fmt}.jsonl", rows), fmt), tokenizer)
    expected = [_expected_chat(reference, turns) for turns in conversations]
    _check_batch(tokenizer, prepared.train, expected)


def test_labels_text_format(tokenizer, reference, write_jsonl, data_config):
    texts = ["A short document.", "A longer document\nwith two lines and digits 12345."]
    prepared = prepare_data(data_config(write_jsonl("t.jsonl", [{"text": t} for t in texts]), "text"), tokenizer)
    sp = reference.instruct_tokenizer.tokenizer
    expected = [(ids, [1] * len(ids)) for ids in (sp.encode(t, bos=True, eos=True) for t in texts)]
    _check_batch(tokenizer, prepared.train, expected)
