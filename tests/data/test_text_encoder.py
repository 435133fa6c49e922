"""Segment encoding equals mistral-common's SentencePiece encoding, including where HF differs."""

from __future__ import annotations

import shutil

import pytest

from finetune.data.text_encoder import sentencepiece_file, text_encoder

# Leading spaces, runs of spaces and control-token text are where the HF fast tokenizer and
# SentencePiece disagree; newlines, digits and non-ASCII are where segment boundaries matter.
SEGMENTS = [
    "hello", " hello", "  hello", "hello ", "x  y", "a   b    c", " ", "  ", "\n", "\nhello", "\n\nhi",
    "a\n\nb", "line\n", "\t tab", "123 4567 89", "3.14159e-10", "héllo 日本語 🙂 ünïcödé",
    "[INST] hi [/INST]", "[INST]", "<s> tag </s>", "<unk>", "[TOOL_CALLS]", "You are terse.\n\nName a color.",
]


@pytest.mark.parametrize("segment", SEGMENTS)
def test_segments_equal_mistral_common(tokenizer, reference, segment):
    expected = reference.instruct_tokenizer.tokenizer.encode(segment, bos=False, eos=False)
    assert text_encoder(tokenizer)(segment) == expected


def test_uses_the_sentencepiece_model_next_to_the_tokenizer(tokenizer, tokenizer_dirs, version):
    encoder = text_encoder(tokenizer)
    assert encoder.exact and sentencepiece_file(tokenizer) == tokenizer_dirs[version] / "tokenizer.model"


def test_empty_text_is_no_tokens(tok_v1):
    assert text_encoder(tok_v1)("") == []


def test_without_sentencepiece_file_falls_back_to_hf_keeping_control_text_plain(tokenizer_dirs, tmp_path, caplog):
    from transformers import AutoTokenizer

    folder = tmp_path / "hf_only"
    shutil.copytree(tokenizer_dirs["v3"], folder)
    (folder / "tokenizer.model").unlink()
    tok = AutoTokenizer.from_pretrained(folder)
    encoder = text_encoder(tok)
    assert not encoder.exact and encoder.kind == "hf"
    assert "no SentencePiece" in caplog.text
    ids = encoder("say [INST] and </s>")
    assert 3 not in ids and tok.eos_token_id not in ids  # typed markers stay text
    assert encoder("Hello, world!") == tok("Hello, world!", add_special_tokens=False).input_ids
