"""Rows of a validation run, and the two ways they are shown: a rich table or JSON.

Every check returns one :class:`CheckResult`. The table puts failing rows first (what needs
attention is on top), then the rest in the order the checks ran; ``--json`` prints the same rows,
in run order, as one JSON object that scripts and CI can read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """One row: what was checked, whether it passed, what was measured and against what.

    ``value`` is the measurement (a max abs difference, a count of keys per row, a version name);
    ``tolerance`` says what passing means for it, in words (``"<= 1e-4"``, ``"== 8 (W)"``);
    ``detail`` says what was run, and on failure what was seen instead and the likely cause.
    """

    name: str
    passed: bool
    value: str | float
    tolerance: str
    detail: str


def skipped(name: str, why: str) -> CheckResult:
    """A row for a check that cannot apply here (no window, no native reference): passes, says why."""
    return CheckResult(name, True, "n/a", "n/a", f"skipped: {why}")


def relative_tolerance(tol: float) -> str:
    """``<= 1e-4 x max(1,|logit|)``: logit differences are relative to their scale, floored at 1."""
    return f"<= {tol:.0e} x max(1,|logit|)".replace("e-0", "e-")


def failed(results: list[CheckResult]) -> list[CheckResult]:
    """The failing rows, in run order."""
    return [r for r in results if not r.passed]


def exit_status(results: list[CheckResult]) -> int:
    """0 when every check passed, 1 when any failed (2 is for a bad target, raised before any row)."""
    return 1 if failed(results) else 0


def ordered(results: list[CheckResult]) -> list[CheckResult]:
    """Failing rows first, each group in run order."""
    return failed(results) + [r for r in results if r.passed]


def format_value(value: str | float) -> str:
    """Floats in a short scientific form (differences span 0 to 1e2), everything else as is."""
    if isinstance(value, float):
        if value == 0:
            return "0"
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def render_table(results: list[CheckResult], console, title: str | None = None) -> None:
    """Print the rows as a rich table on ``console``, failing rows first, then a one-line verdict.

    On a console narrower than 110 columns the details leave the table and follow it, one
    paragraph per row (failing rows first), so that nothing is cut off.
    """
    from rich.table import Table
    from rich.text import Text

    wide = console.width >= 110
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("", no_wrap=True, min_width=4)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("value", no_wrap=True, justify="right")
    table.add_column("tolerance", max_width=24)
    if wide:
        table.add_column("detail", min_width=32, ratio=1)
    rows = ordered(results)
    for row in rows:
        mark = "[green]PASS[/]" if row.passed else "[bold red]FAIL[/]"
        cells = [row.name, format_value(row.value), row.tolerance] + ([row.detail] if wide else [])
        table.add_row(mark, *(Text(cell) for cell in cells))  # plain text: "[sdpa]" is not markup
    console.print(table)
    if not wide:
        for row in rows:
            style = "green" if row.passed else "bold red"
            console.print(Text.assemble((row.name, style), ": " + row.detail))
    bad = failed(results)
    if bad:
        console.print(Text.assemble((f"{len(bad)} of {len(results)} checks failed", "bold red"),
                                    ": " + ", ".join(r.name for r in bad)))
    else:
        console.print(f"[green]all {len(results)} checks passed[/]")


def to_json(results: list[CheckResult], target: dict[str, Any] | None = None) -> str:
    """The rows as a JSON document: ``{"target", "passed", "failed", "checks": [...]}`` (run order)."""
    rows = []
    for row in results:
        data = asdict(row)
        if isinstance(data["value"], float) and not math.isfinite(data["value"]):
            data["value"] = str(data["value"])  # JSON has no NaN / Infinity
        rows.append(data)
    doc = {
        "target": target or {},
        "passed": not failed(results),
        "failed": [r.name for r in failed(results)],
        "checks": rows,
    }
    return json.dumps(doc, indent=2)
