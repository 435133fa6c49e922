"""How long the training rows are: statistics, a terminal histogram and ``data_lengths.png``.

Read from the tokenized training set (``input_ids`` / ``completion_mask``), so the figures are
exactly what the trainer will see: tokens per row (min / median / p95 / max), the share of tokens
that carry loss, and the optimiser steps one epoch takes at the recipe's effective batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

_BINS = 12
_BAR = 40


@dataclass
class LengthStats:
    rows: int
    tokens: int
    trained_tokens: int
    min: int
    median: int
    p95: int
    max: int
    max_length: int
    steps_per_epoch: int
    rows_per_step: int
    packed_into: int | None = None  # with data.packing: sequences of max_length tokens holding the rows

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "trained_share": round(self.trained_share, 4)}

    def lines(self) -> list[str]:
        return [
            f"tokens per row: min {self.min:,}, median {self.median:,}, p95 {self.p95:,}, max {self.max:,} "
            f"(max_length {self.max_length:,})",
            f"tokens carrying loss: {self.trained_tokens:,} of {self.tokens:,} ({self.trained_share:.1%})",
            f"steps per epoch: {self.steps_per_epoch:,} ({self.rows:,} rows / {self.rows_per_step:,} rows per step)"
            if self.packed_into is None else
            f"packing: {self.rows:,} rows in {self.packed_into:,} sequences of {self.max_length:,} tokens "
            f"({self.tokens / (self.packed_into * self.max_length):.0%} filled); steps per epoch: "
            f"{self.steps_per_epoch:,} ({self.rows_per_step:,} sequences per step)",
        ]


def length_stats(
    lengths: list[int], trained: list[int], max_length: int, rows_per_step: int, packed_into: int | None = None
) -> LengthStats:
    """Statistics of the training rows (``lengths`` and ``trained`` token counts per row); with packing,
    ``packed_into`` sequences are what the steps count."""
    ordered = sorted(lengths)
    return LengthStats(
        rows=len(ordered),
        tokens=sum(ordered),
        trained_tokens=sum(trained),
        min=ordered[0],
        median=ordered[len(ordered) // 2],
        p95=ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        max=ordered[-1],
        max_length=max_length,
        steps_per_epoch=math.ceil((packed_into or len(ordered)) / rows_per_step),
        rows_per_step=rows_per_step,
        packed_into=packed_into,
    )


def bins(lengths: list[int], max_length: int) -> list[tuple[int, int, int]]:
    """(low, high, count) over [0, max_length] in equal-width bins (high inclusive)."""
    width = max(1, math.ceil(max_length / _BINS))
    counts = [0] * math.ceil(max_length / width)
    for n in lengths:
        counts[min(len(counts) - 1, max(0, (n - 1) // width))] += 1
    return [(i * width + 1, min((i + 1) * width, max_length), c) for i, c in enumerate(counts)]


def histogram_lines(lengths: list[int], max_length: int) -> list[str]:
    """A text histogram of tokens per row, one line per bin."""
    table = bins(lengths, max_length)
    top = max(c for _, _, c in table) or 1
    width = len(f"{max_length:,}")
    return [
        f"{low:>{width},}-{high:<{width},} {'█' * math.ceil(_BAR * count / top) if count else '':<{_BAR}} {count:,}"
        for low, high, count in table
    ]


def plot_lengths(lengths: list[int], trained: list[int], max_length: int, out: Path, title: str) -> None:
    """``data_lengths.png``: tokens per row and trained tokens per row, with max_length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    edges = [low - 0.5 for low, _, _ in bins(lengths, max_length)] + [max_length + 0.5]  # as the text histogram
    ax.hist(lengths, bins=edges, color="tab:blue", alpha=0.8, label="tokens per row")
    ax.hist(trained, bins=edges, color="tab:orange", alpha=0.7, label="tokens carrying loss per row")
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length:,}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
