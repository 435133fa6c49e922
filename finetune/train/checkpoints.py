"""Checkpoints that are either whole or absent, and the search for the newest good one.

transformers writes ``checkpoint-N`` in place, file by file, so a run killed mid-save leaves a folder
that looks like a checkpoint but holds half an optimizer state.  :class:`AtomicCheckpoints` makes the
trainer write into ``checkpoints/.staging/checkpoint-N`` instead; once every process has finished,
the main process records a manifest (``checkpoint.json``: each file's size and SHA-256), then renames
the folder into place.  A ``checkpoint-N`` folder therefore exists only once it is complete, and the
manifest lets a resume detect one damaged afterwards (a truncated or overwritten file) and fall back
to the previous good checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.checksum import file_sha256

MANIFEST = "checkpoint.json"
STAGING = ".staging"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def write_manifest(folder: Path) -> None:
    """Record every file under ``folder`` with its size and SHA-256, as the last file written."""
    files = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(folder / MANIFEST)


def problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when every file matches its manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (not written by mistral-ft, or the save never finished)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, {expected['bytes']:,} were written"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum (the file was changed after the save)"
    if not any(name.startswith("trainer_state") for name in files):
        return "no trainer_state.json"
    return None


@dataclass
class Choice:
    """The checkpoint a resume starts from, and the newer ones it had to pass over (with reasons)."""

    checkpoint: Path | None
    skipped: list[tuple[Path, str]]


def newest_good(checkpoints: Path) -> Choice:
    """The highest-step ``checkpoint-N`` under ``checkpoints`` that passes :func:`problem`."""
    found = sorted(
        (int(m.group(1)), p) for p in checkpoints.glob("checkpoint-*") if (m := _NAME.match(p.name)) and p.is_dir()
    )
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        reason = problem(path)
        if reason is None:
            return Choice(path, skipped)
        skipped.append((path, reason))
    return Choice(None, skipped)


def step_of(checkpoint: Path) -> int:
    """The optimiser step a ``checkpoint-N`` folder was written at."""
    match = _NAME.match(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint-N folder")
    return int(match.group(1))


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is staged, then published whole by one rename (see module doc),
    and loaded back on CPU when several processes resume.

    Put it before the trainer class: ``class T(AtomicCheckpoints, SFTTrainer)``.
    """

    _staging = False

    def _get_output_dir(self, trial):
        root = super()._get_output_dir(trial)
        return os.path.join(root, STAGING) if self._staging else root

    def _save_checkpoint(self, model, trial):
        root = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staged = root / STAGING / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # left by a process killed mid-save
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (RNG state per rank)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = root / name
            write_manifest(staged)
            if final.exists():  # a re-save at the same step (resumed run): replace it whole
                shutil.rmtree(final)
            staged.rename(final)
            _fsync_dir(root)
            if not any(staged.parent.iterdir()):
                staged.parent.rmdir()
            self._keep_newest(root)
        self.accelerator.wait_for_everyone()

    def _load_optimizer_and_scheduler(self, checkpoint):
        """transformers 5.6 maps the optimizer state to ``args.device`` when several processes run; on
        CPU that is ``cpu:0``, a location torch.load cannot restore, so a multi-process CPU resume would
        crash.  That one case loads onto "cpu"; everything else is transformers' own code."""
        several_on_cpu = self.args.world_size > 1 and self.args.device.type == "cpu"
        if checkpoint is None or not several_on_cpu or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_optimizer_and_scheduler(checkpoint)
        folder = Path(checkpoint)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))

    def _keep_newest(self, root: Path) -> None:
        """Honour ``save_total_limit``: delete the oldest published checkpoints beyond it."""
        limit = self.args.save_total_limit
        if not limit:
            return
        published = sorted((step_of(p), p) for p in root.glob("checkpoint-*") if _NAME.match(p.name))
        for _, path in published[:-limit]:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
