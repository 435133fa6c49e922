"""One recipe source -> parsed examples, each remembering its file and row.

The steps, in order: read raw rows (:mod:`~finetune.data.sources`), apply the ``columns:``
mapping, apply ``source_filter``, parse with the source's format, add the source's
``system_prompt``, stop at ``max_rows``.  Every row read is counted in the source's
:class:`~finetune.data.report.SourceReport`; a row that cannot be read or that the format rejects
is recorded with its recipe key, file, row, column and reason (:mod:`~finetune.data.bad_rows`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from finetune.data.conversation import Example, PreferencePair, with_system_prompt
from finetune.data.formats import Format, RowError, get_format, rename_columns
from finetune.data.bad_rows import Rejected, RejectedRows
from finetune.data.report import BAD_ROW, FILTERED, SourceReport
from finetune.data.sources import read_rows
from finetune.errors import FinetuneError
from finetune.recipe.schema import SourceConfig


@dataclass
class Item:
    """A parsed example, where it came from, and the report it is counted in."""

    example: Example
    where: str
    report: SourceReport
    order: int  # 1-based position among the rows read from this source (for sorted error lists)


def load_examples(source: SourceConfig, key: str, rejected: RejectedRows) -> tuple[list[Item], SourceReport]:
    """The examples of ``source`` (recipe key ``key``, e.g. ``data.sources[0]``) and their report.

    Rows that cannot be read or parsed go to ``rejected`` (counted as dropped, reason BAD_ROW).
    """
    fmt = get_format(source.format)
    _check_columns(source, fmt, key)
    report = SourceReport(key=key, path=source.path, format=source.format)
    wanted = set(source.source_filter) if source.source_filter is not None else None
    seen_sources: Counter = Counter()
    items: list[Item] = []
    for raw in read_rows(source.path, source.split, key):
        if source.max_rows is not None and len(items) == source.max_rows:
            report.stopped_at_max_rows = source.max_rows
            break
        report.read += 1
        if raw.problem is not None:
            rejected.add(report, Rejected(f"{key} ({fmt.name} format)", raw.where, raw.problem, row=raw.text), BAD_ROW)
            continue
        try:
            row = rename_columns(raw.data, source.columns, fmt.required)
            if wanted is not None:
                value = _source_value(row)
                seen_sources[value] += 1
                if value not in wanted:
                    report.dropped[FILTERED] += 1
                    continue
            example = fmt.parse(row)
        except RowError as err:
            bad = Rejected(f"{key} ({fmt.name} format)", raw.where, err.reason, err.column, raw.data, err.hint)
            rejected.add(report, bad, BAD_ROW)
            continue
        if isinstance(example, PreferencePair):
            example = example.with_system_prompt(source.system_prompt)
        elif not isinstance(example, str):
            example = with_system_prompt(example, source.system_prompt)
        items.append(Item(example, raw.where, report, report.read))
    _check_not_empty(source, key, report, seen_sources)
    return items, report


def _source_value(row: dict) -> str:
    """The ``source`` column that ``source_filter`` matches against."""
    if "source" not in row:
        found = ", ".join(map(str, row)) or "none"
        raise RowError(
            "source",
            f"source_filter needs a 'source' column, and this row has none (columns found: {found})",
            hint="Map yours with `columns: {source: <your column>}` or remove source_filter.",
        )
    return str(row["source"])


def _check_columns(source: SourceConfig, fmt: Format, key: str) -> None:
    """``columns:`` keys must be columns of the format (catches typos before reading any row)."""
    unknown = [name for name in source.columns if name not in fmt.columns and name != "source"]
    if unknown:
        raise FinetuneError(
            f"{key}.columns: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
            f"a column of the {fmt.name} format; its columns are {', '.join(fmt.columns)}.",
            hint="Keys are the format's column names, values are your data's: `columns: {response: answer}`.",
        )


def _check_not_empty(source: SourceConfig, key: str, report: SourceReport, seen: Counter) -> None:
    """A source that yields no example is a mistake worth stopping for."""
    if report.read == 0:
        raise FinetuneError(f"{key}: {source.path} (split {source.split!r}) has no rows.")
    if report.dropped[FILTERED] == report.read:
        common = ", ".join(f"{value!r} ({count:,})" for value, count in seen.most_common(10))
        raise FinetuneError(
            f"{key}.source_filter keeps none of the {report.read:,} rows of {source.path}: "
            f"{sorted(source.source_filter or [])} matched nothing. Sources found: {common}."
        )
