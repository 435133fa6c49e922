"""Trainer callbacks: ``metrics.jsonl`` in the run folder, a rich progress bar, and a checkpoint on Ctrl-C."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from finetune.errors import FinetuneError
from finetune.train import distributed

_KEYS = {"loss": "loss", "eval_loss": "eval_loss", "learning_rate": "lr", "grad_norm": "grad_norm", "epoch": "epoch"}


class MetricsLogger(TrainerCallback):
    """Appends one JSON line per log event: step, loss, eval loss, lr and tokens/s since the last line."""

    def __init__(self, path: Path):
        self.path = path
        self._last_time = time.perf_counter()
        self._last_tokens = 0
        self._last_row: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step}
        row.update({short: logs[key] for key, short in _KEYS.items() if key in logs})
        if "num_tokens" in logs and "loss" in logs:
            now, tokens = time.perf_counter(), int(logs["num_tokens"])
            row["tokens_per_s"] = round((tokens - self._last_tokens) / max(now - self._last_time, 1e-9), 1)
            self._last_time, self._last_tokens = now, tokens
        # skip the trainer's end-of-run timing line, and an evaluation repeated at the same step
        if set(row) - {"step", "epoch"} and row != self._last_row:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self._last_row = row


class RichProgress(TrainerCallback):
    """A single rich progress bar over optimiser steps showing the latest loss."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM: finish the current step, write a checkpoint, stop; a second signal stops at once.

    Under several processes the request is shared at each step end (any process interrupted stops
    them all at the same step), so every rank takes part in the same checkpoint.
    """

    def __init__(self, console: Console):
        self.console = console
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame):
        if self.requested:  # the second time: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "\n[yellow]interrupted: saving a checkpoint after this step (press Ctrl-C again to stop at once)[/]"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_process(self.requested):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def reporting_callbacks(report_to: list[str], run_dir: Path) -> list[TrainerCallback]:
    """TensorBoard logging into ``<run>/tensorboard`` (main process only); wandb goes through ``report_to``."""
    if "tensorboard" not in report_to or not distributed.is_main():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))]


def check_reporters(report_to: list[str]) -> None:
    """Fail before any slow step when a logger named in ``train.report_to`` is not installed."""
    import importlib.util

    for name in report_to:
        if importlib.util.find_spec(name) is None:
            raise FinetuneError(
                f"train.report_to lists {name}, which is not installed.",
                hint=f"`pip install {name}`, or remove it from train.report_to.",
            )
