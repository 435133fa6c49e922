"""Helpers shared by the validate tests (a uniquely named module: test folders have no packages)."""

from __future__ import annotations

import json
from pathlib import Path

W = 8


def edit_config(folder: Path, out: Path, **changes) -> Path:
    """A copy of ``folder`` (weights and tokenizer linked, not copied) whose config.json has ``changes``."""
    out.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key == "rope_theta":
            config["rope_parameters"]["rope_theta"] = value
        else:
            config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


def by_name(rows):
    return {r.name: r for r in rows}


def failing(rows):
    return sorted(r.name for r in rows if not r.passed)
