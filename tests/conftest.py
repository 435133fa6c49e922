"""Fixtures shared across the suite: a tiny Mistral folder with the real v0.1 tokenizer, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """A random 2-layer Mistral (hidden 128) with Mistral 7B v0.1's tokenizer, as the quickstart uses."""
    from finetune.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mistral")


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m finetune ARGS`` from the repository root, as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
