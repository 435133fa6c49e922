"""The one exception type users see.

Anything that is the user's to fix (a recipe typo, a missing file, a model that is not available
offline, a bad data row) is raised as :class:`FinetuneError` with a single paragraph that names the
file, key or row and says what to do.  The CLI prints that paragraph and exits non-zero without a
traceback; every other exception is a bug in mistral-ft and keeps its traceback.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """A problem with the user's input, reported as one readable paragraph."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message.strip()
        self.hint = hint.strip() if hint else None
        super().__init__(self.render())

    def render(self) -> str:
        """The paragraph printed to the user: what is wrong, then what to do."""
        return f"{self.message} {self.hint}" if self.hint else self.message


class Interrupted(FinetuneError):
    """Training stopped on Ctrl-C / SIGTERM after writing a checkpoint; the run can be resumed (exit 130)."""
