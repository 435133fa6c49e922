"""``mistral-ft preprocess --show N``: formatted rows with the trained tokens made visible.

Each row is printed token by token as the model will read it: special tokens (``<s>``, ``</s>``,
``[INST]`` in the v3 vocabulary) in bold magenta, and every token that carries loss inside ``«…»``
and in green, so the masking can be checked with one's own eyes in a terminal, a log or a README.
"""

from __future__ import annotations

from rich.text import Text

TRAINED_STYLE = "bold green"
SPECIAL_STYLE = "bold magenta"


def render_row(tokenizer, input_ids: list[int], mask: list[int]) -> Text:
    """One tokenized row as rich Text: special tokens shown, trained spans marked « »."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(input_ids)
    text = Text()
    inside = False
    for token_id, piece, trained in zip(input_ids, pieces, mask):
        if trained and not inside:
            text.append("«", style=TRAINED_STYLE)
        elif not trained and inside:
            text.append("»", style=TRAINED_STYLE)
        inside = bool(trained)
        text.append(_readable(piece, token_id in special or _is_control(piece)),
                    style=_style(token_id in special or _is_control(piece), inside))
    if inside:
        text.append("»", style=TRAINED_STYLE)
    return text


def _readable(piece: str, special: bool) -> str:
    if special:
        return piece
    if piece.startswith("<0x") and piece.endswith(">"):  # a byte-fallback piece (newline, tab, ...)
        value = int(piece[3:-1], 16)
        return chr(value) if value < 128 else piece
    return piece.replace("▁", " ")


def _is_control(piece: str) -> bool:
    return piece.startswith("[") and piece.endswith("]") and piece[1:-1].replace("_", "").isupper()


def _style(special: bool, trained: bool) -> str | None:
    if special:
        return SPECIAL_STYLE
    return TRAINED_STYLE if trained else None
