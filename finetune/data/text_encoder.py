"""Text segment -> token ids, exactly as mistral-common encodes it.

mistral-common encodes every segment of a prompt with SentencePiece (``SentencePieceProcessor.encode``:
dummy-prefix space, whitespace-run splitting, no BOS/EOS, ``[INST]`` or ``<s>`` typed by a user stay
plain text).  The Hugging Face fast tokenizer converted from the same ``tokenizer.model`` does not
agree on three things, measured on Mistral 7B v0.1 and v0.3:

* text starting with a space gets no dummy prefix (``" hello"``: HF ``▁hello``, SP ``▁ ▁hello``);
* runs of spaces merge differently (``"x  y"``: HF ``▁x ▁▁ y``, SP ``▁x ▁ ▁y``), because the HF
  merges rank whitespace pieces first while SentencePiece scores them last;
* ``[INST]``, ``</s>`` typed inside content become control tokens (prompt injection).

So when the tokenizer folder holds its SentencePiece model (every Mistral release does) we encode
with it; otherwise we fall back to the HF tokenizer with special-token splitting off, and warn that
whitespace edge cases may differ from mistral-common by a token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

# Plain text whose pieces the HF and SentencePiece tokenizers must agree on when both describe the
# same vocabulary (no leading space, no whitespace runs: the cases where they legitimately differ).
_PROBE = "Hello, world! 12 é 日本"


class TextEncoder:
    """Callable ``text -> ids`` with no BOS/EOS; ``exact`` says whether it is mistral-common's own."""

    def __init__(self, encode: Callable[[str], list[int]], *, exact: bool, kind: str):
        self._encode = encode
        self.exact = exact
        self.kind = kind

    def __call__(self, text: str) -> list[int]:
        return self._encode(text) if text else []

    def __repr__(self) -> str:
        return f"TextEncoder({self.kind}, exact={self.exact})"


def sentencepiece_file(tokenizer) -> Path | None:
    """The ``tokenizer.model`` SentencePiece file the HF tokenizer was loaded from, if any."""
    candidates = [getattr(tokenizer, "vocab_file", None)]
    name = getattr(tokenizer, "name_or_path", None)
    if name:
        candidates.append(Path(name) / "tokenizer.model")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _agrees(processor, tokenizer) -> bool:
    """Whether the SentencePiece model and the HF tokenizer describe the same vocabulary."""
    if processor.bos_id() != tokenizer.bos_token_id or processor.eos_id() != tokenizer.eos_token_id:
        return False
    if processor.get_piece_size() > len(tokenizer):
        return False
    return processor.encode(_PROBE) == tokenizer(_PROBE, add_special_tokens=False).input_ids


class _HFEncode:
    """Text -> ids with the HF tokenizer, no special tokens added (a class, so prepared data can be pickled)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


def text_encoder(tokenizer) -> TextEncoder:
    """The most exact segment encoder available for ``tokenizer`` (see the module docstring)."""
    path = sentencepiece_file(tokenizer)
    if path is not None:
        from sentencepiece import SentencePieceProcessor

        processor = SentencePieceProcessor(model_file=str(path))
        if _agrees(processor, tokenizer):
            return TextEncoder(processor.encode, exact=True, kind=f"sentencepiece:{path.name}")
        log.warning("%s does not match the tokenizer's vocabulary; encoding with the HF tokenizer", path)

    encode = _HFEncode(tokenizer)
    if getattr(tokenizer, "bos_token", None) == "<s>":  # a SentencePiece-style vocabulary missing its model
        log.warning(
            "no SentencePiece tokenizer.model next to the tokenizer: encoding prompt segments with the HF "
            "fast tokenizer, which can differ from mistral-common by a token on leading spaces and "
            "runs of spaces"
        )
    return TextEncoder(encode, exact=False, kind="hf")
