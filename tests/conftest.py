"""Fixtures shared across the suite: a tiny Mistral folder with the real v0.1 tokenizer, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# Developers may set MISTRAL_FT_TEST_CACHE=<dir> to keep the tiny model and the trained quickstart run
# between pytest invocations (each is rebuilt only when missing). CI never sets it: every run builds both.
_CACHE = os.environ.get("MISTRAL_FT_TEST_CACHE")


def _fixture_dir(tmp_path_factory, name: str) -> Path:
    if _CACHE:
        Path(_CACHE).mkdir(parents=True, exist_ok=True)
        return Path(_CACHE).resolve() / name
    return tmp_path_factory.mktemp(name) / name


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """A random 2-layer Mistral (hidden 128) with Mistral 7B v0.1's tokenizer, as the quickstart uses."""
    from finetune.model.tiny import build_tiny_model

    out = _fixture_dir(tmp_path_factory, "tiny-mistral")
    if (out / "config.json").is_file():
        return out
    return build_tiny_model(out)


@pytest.fixture(scope="session")
def quickstart_run(tiny_mistral, tmp_path_factory) -> tuple[Path, str]:
    """The quickstart recipe trained once on the tiny model: (run folder, the CLI's stderr).

    Shared by every test that needs a trained adapter (the quickstart's own checks, merge, push,
    generate and chat), so the two-minute run happens once per session.
    """
    out = _fixture_dir(tmp_path_factory, "quickstart-run")
    log = out.parent / "quickstart-run.stderr"
    if (out / "summary.json").is_file() and log.is_file():
        return out, log.read_text()
    if out.exists():
        shutil.rmtree(out)
    result = run_cli("train", "recipes/quickstart.yaml", "--set", f"model.base={tiny_mistral}",
                     "--set", "train.report_to=[tensorboard]", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    log.write_text(result.stderr)
    return out, result.stderr


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m finetune ARGS`` from the repository root, as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
