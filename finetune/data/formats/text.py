"""``text``: plain language modelling on column ``text``; no template, every token is trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune.data.formats import text_field

COLUMNS = ("text",)
REQUIRED = ("text",)


def parse(row: Mapping[str, Any]) -> str:
    """The document, verbatim."""
    return text_field(row, "text", what="text")
