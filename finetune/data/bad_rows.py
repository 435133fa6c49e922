"""Rows that cannot be used, each with its place and reason; none is ever lost without a trace.

A row is *bad* when it cannot be read (not valid JSON, not an object, a CSV record with extra
fields) or its format rejects it (a missing, null, empty or non-string field, roles out of order, a
conversation the template cannot render).  ``data.on_bad_row`` decides: ``error`` (the default)
reads every source to the end, then stops with one report listing every bad row; ``skip`` trains
without them.  Rows dropped on purpose by ``data.overlong: drop`` (or left with no trained token by
truncation) are not bad, but they are recorded the same way, so that ``rejected.jsonl`` in the run
folder holds every row that was read and not trained on, with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data.report import BAD_ROW
from finetune.errors import FinetuneError

_LISTED = 200  # bad rows listed in the error; all of them go to rejected.jsonl under `skip`


@dataclass
class Rejected:
    """One row that was read and will not be trained on."""

    key: str  # the recipe entry, e.g. data.sources[0]
    where: str  # "<file> line 7" / "<file> row 3"
    reason: str
    column: str | None = None
    row: Any = None  # the row as read (a dict), or its raw text when it could not be parsed
    hint: str | None = None
    bad: bool = True  # False for rows dropped by a length policy the user chose

    def line(self) -> str:
        column = f", column {self.column!r}" if self.column else ""
        return f"{self.key}, {self.where}{column}: {self.reason}"

    def record(self) -> dict:
        return {"source": self.key, "where": self.where, "column": self.column, "reason": self.reason, "row": self.row}


class RejectedRows:
    """Collects rejected rows while the sources are read and encoded, and applies ``data.on_bad_row``."""

    def __init__(self, on_bad_row: str):
        self.on_bad_row = on_bad_row
        self.rows: list[Rejected] = []

    def add(self, report, rejected: Rejected, counted_as: str) -> None:
        """Record ``rejected`` and count it in its source's ``report`` as dropped for ``counted_as``."""
        report.dropped[counted_as] += 1
        self.rows.append(rejected)

    def item_failed(self, item, error) -> None:
        """A parsed item the template could not render (a FinetuneError): a bad row."""
        self.add(item.report, Rejected(item.report.key, item.where, error.message.rstrip("."), row=item.example,
                                       hint=error.hint), BAD_ROW)

    def item_dropped(self, item, reason: str, detail: str) -> None:
        """A parsed item dropped by the length policy the user chose: counted under ``reason``, not bad."""
        self.add(item.report, Rejected(item.report.key, item.where, detail, row=item.example, bad=False), reason)

    @property
    def bad(self) -> list[Rejected]:
        return [r for r in self.rows if r.bad]

    def raise_if_bad(self) -> None:
        """Under ``on_bad_row: error``, one error listing every bad row (in the order they were read)."""
        bad = self.bad
        if self.on_bad_row != "error" or not bad:
            return
        skip = "or set `data.on_bad_row: skip` to train without them (each is then written, with its reason, to rejected.jsonl in the run folder)"
        if len(bad) == 1:
            (row,) = bad
            raise FinetuneError(f"{row.line()}.", hint=row.hint or f"Fix or remove that row, {skip}; rows are never skipped silently.")
        listed = "\n".join(f"  {r.line()}" for r in bad[:_LISTED])
        more = f"\n  ... and {len(bad) - _LISTED:,} more" if len(bad) > _LISTED else ""
        hints = {r.hint for r in bad if r.hint}
        raise FinetuneError(
            f"{len(bad):,} bad rows (data.on_bad_row: error):\n{listed}{more}\n",
            hint=" ".join(sorted(hints)) + f" Fix or remove them, {skip}.",
        )

    def write(self, path: Path) -> int:
        """Write ``rejected.jsonl`` (when any row was rejected); the number of rows written."""
        if not self.rows:
            return 0
        with open(path, "w", encoding="utf-8") as f:
            for row in self.rows:
                f.write(json.dumps(row.record(), ensure_ascii=False, default=str) + "\n")
        return len(self.rows)
