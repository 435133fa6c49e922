"""What happened to every row: read, kept, truncated, dropped and why.

Nothing is dropped without being counted here.  For every source ``read == kept + sum(dropped)``;
``truncated`` rows are a subset of ``kept``.  Rows beyond ``max_rows`` are never read, and the
source says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

# Drop reasons (keys of SourceReport.dropped), worded for the summary.
FILTERED = "not in source_filter"
BAD_ROW = "bad row"
OVERLONG = "longer than max_length"
NOTHING_TRAINED = "truncation left no trained tokens"


@dataclass
class SourceReport:
    """Row counts of one recipe source (``data.sources[i]`` or ``data.validation_sources[i]``)."""

    key: str
    path: str
    format: str
    read: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    stopped_at_max_rows: int | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def line(self) -> str:
        """One summary line for this source."""
        text = f"{self.key} {self.path} ({self.format}): read {self.read:,}, kept {self.kept:,}"
        if self.truncated:
            text += f" ({self.truncated:,} truncated)"
        if self.dropped_total:
            reasons = ", ".join(f"{count:,} {reason}" for reason, count in self.dropped.most_common())
            text += f", dropped {self.dropped_total:,} ({reasons})"
        if self.stopped_at_max_rows is not None:
            text += f"; stopped reading at max_rows={self.stopped_at_max_rows:,}"
        return text


@dataclass
class DataReport:
    """The data path's account of itself, printed before training and saved with the run."""

    template: str
    encoder: str
    max_length: int
    overlong: str
    sources: list[SourceReport] = field(default_factory=list)
    train_rows: int = 0
    eval_rows: int = 0
    eval_origin: str = "none"
    train_tokens: int = 0
    trained_tokens: int = 0
    eval_prompts: int = 0
    eval_prompts_skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def source(self, key: str) -> SourceReport:
        """The report of the source with recipe key ``key``."""
        return next(s for s in self.sources if s.key == key)

    def as_dict(self) -> dict:
        """Plain JSON-ready form, for summary.json."""
        out = asdict(self)
        for plain, source in zip(out["sources"], self.sources):
            plain["dropped"] = dict(source.dropped)  # asdict would rebuild the Counter from (key, count) pairs
        return out

    def summary(self) -> str:
        """A few lines for the terminal and the run folder."""
        lines = [
            f"data: template {self.template} ({self.encoder}), max_length {self.max_length}, "
            f"overlong rows: {self.overlong}"
        ]
        lines += [f"  {source.line()}" for source in self.sources]
        share = f" ({self.trained_tokens / self.train_tokens:.0%} trained)" if self.train_tokens else ""
        lines.append(f"  train: {self.train_rows:,} rows, {self.train_tokens:,} tokens{share}")
        evaluation = f"  eval: {self.eval_rows:,} rows ({self.eval_origin}), {self.eval_prompts:,} generation prompts"
        if self.eval_prompts_skipped:
            evaluation += f" ({self.eval_prompts_skipped:,} prompts longer than max_length skipped)"
        lines.append(evaluation)
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
