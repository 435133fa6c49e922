"""Shared fixtures of the data-path tests: real Mistral tokenizers and fixture files on disk.

Tokenizer folders are written once per session (``save_mistral_tokenizer`` takes about a second);
tests that change a tokenizer (a chat template) get a deep copy.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from finetune.recipe.schema import DataConfig


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    from finetune.model.tiny import save_mistral_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {version: save_mistral_tokenizer(version, root / version) for version in ("v1", "v3")}


@pytest.fixture(scope="session")
def tokenizers(tokenizer_dirs):
    from transformers import AutoTokenizer

    return {version: AutoTokenizer.from_pretrained(path) for version, path in tokenizer_dirs.items()}


@pytest.fixture(scope="session")
def tok_v1(tokenizers):
    return tokenizers["v1"]


@pytest.fixture(scope="session")
def tok_v3(tokenizers):
    return tokenizers["v3"]


@pytest.fixture(params=["v1", "v3"])
def version(request) -> str:
    return request.param


@pytest.fixture
def tokenizer(tokenizers, version):
    """The v1 and the v3 tokenizer, in turn (shared: do not modify)."""
    return tokenizers[version]


@pytest.fixture
def fresh_tokenizer(tokenizers):
    """A private copy of a tokenizer that a test may modify: ``fresh_tokenizer("v3")``."""
    return lambda version: copy.deepcopy(tokenizers[version])


@pytest.fixture(scope="session")
def mistral_common_tokenizers():
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return {"v1": MistralTokenizer.v1(), "v3": MistralTokenizer.v3()}


@pytest.fixture
def reference(mistral_common_tokenizers, version):
    """mistral-common's MistralTokenizer matching the ``tokenizer`` fixture."""
    return mistral_common_tokenizers[version]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def write_jsonl(tmp_path):
    """``write_jsonl(name, rows) -> path``: a JSON Lines file under tmp_path."""
    return lambda name, rows: _write_jsonl(tmp_path / name, rows)


@pytest.fixture
def write_csv(tmp_path):
    """``write_csv(name, rows) -> path``: a CSV file (header from the first row) under tmp_path."""
    return lambda name, rows: _write_csv(tmp_path / name, rows)


@pytest.fixture
def data_config():
    """``data_config(path, format, **source_keys, data={...})``: a one-source DataConfig, no hold-out."""

    def make(path, fmt, data: dict | None = None, **source):
        fields = {"sources": [{"path": str(path), "format": fmt, **source}], "validation_ratio": 0}
        return DataConfig(**{**fields, **(data or {})})

    return make
