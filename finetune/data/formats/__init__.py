"""Row formats: one raw row (a dict of columns) -> one example (a conversation or a plain text).

Each format module exposes ``COLUMNS`` (the columns it reads, required ones first), ``REQUIRED``
and ``parse(row) -> Example``.  Parsers know nothing about files: they raise :class:`RowError`
naming the column and the reason, and the caller adds the source, file and row number.  The
``columns:`` mapping of a source is applied by :func:`rename_columns` before parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from finetune.data.conversation import Example


class RowError(Exception):
    """A row the format cannot parse: which column, what is wrong, and optionally what to do."""

    def __init__(self, column: str | None, reason: str, hint: str | None = None):
        self.column = column
        self.reason = reason
        self.hint = hint
        super().__init__(f"column {column!r}: {reason}" if column else reason)


@dataclass(frozen=True)
class Format:
    """A named row format: the columns it reads and its parser."""

    name: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    parse: Callable[[Mapping[str, Any]], Example]


def describe(value: Any) -> str:
    """A short description of an unexpected value for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def text_field(row: Mapping[str, Any], column: str, *, what: str = "value", optional: bool = False) -> str:
    """The string in ``row[column]``; null, empty or whitespace-only values are errors unless optional.

    Optional fields give ``""`` when absent, null or empty.  Content is returned verbatim (not
    stripped): whitespace is part of what the model learns.
    """
    if column not in row:
        if optional:
            return ""
        raise missing_column(row, column)
    value = row[column]
    if value is None:
        if optional:
            return ""
        raise RowError(column, f"the {what} is null (empty)")
    if not isinstance(value, str):
        raise RowError(column, f"the {what} must be text, got {describe(value)}")
    if not value.strip() and not optional:
        raise RowError(column, f"the {what} is empty" + (" (whitespace only)" if value else ""))
    return value


def missing_column(row: Mapping[str, Any], column: str) -> RowError:
    """The error for a column the row does not have, listing those it has."""
    found = ", ".join(map(str, row)) or "none"
    return RowError(
        column,
        f"the column is missing (columns found: {found})",
        hint=f"If your data calls it something else, map it in the source: `columns: {{{column}: <your column>}}`.",
    )


def rename_columns(
    row: Mapping[str, Any], columns: Mapping[str, str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``row`` with each user column renamed to the format column it is mapped to.

    Unmapped columns keep their names.  A mapped column the row lacks is an error naming both
    names when the format requires it, and simply absent when it is optional (alpaca's ``input``).
    """
    if not columns:
        return dict(row)
    renamed = {key: value for key, value in row.items() if key not in columns.values()}
    for format_column, user_column in columns.items():
        if user_column in row:
            renamed[format_column] = row[user_column]
        elif format_column in required:
            found = ", ".join(map(str, row)) or "none"
            raise RowError(
                user_column,
                f"the column is missing (mapped to {format_column!r} by `columns:`; columns found: {found})",
            )
    return renamed


def _modules() -> dict[str, ModuleType]:
    from finetune.data.formats import alpaca, instruct_v3, messages, preference, prompt_completion, text

    return {
        "instruct-v3": instruct_v3,
        "alpaca": alpaca,
        "messages": messages,
        "prompt-completion": prompt_completion,
        "text": text,
        "preference": preference,
    }


def get_format(name: str) -> Format:
    """The :class:`Format` registered under ``name`` (a ``data.sources[].format`` value)."""
    modules = _modules()
    if name not in modules:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(modules)}")
    module = modules[name]
    return Format(name, tuple(module.COLUMNS), tuple(module.REQUIRED), module.parse)
